"""Research code around the library: reference models, data, training, studies and the command line.

Not part of the estimator API; it may change between releases. Each module is imported on use:

- :mod:`~tcestim.experiments.data`: procedural dSprites (``SpritesDataset``), the official .npz, pinwheel
- :mod:`~tcestim.experiments.models`: reference VAEs (``ConvVAE``, ``MLPVAE``)
- :mod:`~tcestim.experiments.train`: ``python -m tcestim train`` / ``evaluate``
- :mod:`~tcestim.experiments.synthetic`: synthetic posteriors with known TC
- :mod:`~tcestim.experiments.demo`: ``python -m tcestim demo``
- :mod:`~tcestim.experiments.bias_study`: ``python -m tcestim bias``
- :mod:`~tcestim.experiments.cli`: the command line's parser
"""
