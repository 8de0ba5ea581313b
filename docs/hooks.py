"""mkdocs hook: publish the committed benchmark plots with the site without copying them into docs/.

benchmarks/results/bias/*.png (and paper-cpu/*.png) appear in the built site under results/bias/
(results/paper-cpu/), so a page links them as ``../results/bias/<name>.png`` and the site always shows
the plots the study last wrote.
"""
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {"results/bias": ROOT / "benchmarks" / "results" / "bias",
             "results/paper-cpu": ROOT / "benchmarks" / "results" / "paper-cpu"}


def on_files(files, config):
    for target, folder in PUBLISHED.items():
        for path in sorted(folder.glob("*.png")):
            files.append(File.generated(config, f"{target}/{path.name}", abs_src_path=str(path)))
    return files
