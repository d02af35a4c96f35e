"""`fmnist-lab <verb> ...`: one command line for every verb (each also `python -m
fmnist_lab.<verb>`).

Verbs that compose a config take Hydra's `key=value` overrides; the others take `--flags`
named after the config key they stand for (`--tracking-uri` for `tracking.uri`, `--data` for
`data`). Nothing heavy is imported here: `--help` answers at once, and a verb loads torch,
Lightning or MLflow only when it runs.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"

# verb: (module run as `python -m`, its config name for Hydra verbs or None, one line)
VERBS = {
    "train": ("fmnist_lab.train", "train", "train one model and record it in MLflow"),
    "sweep": ("fmnist_lab.sweep", "sweep", "search a sweep file's space with Optuna"),
    "cv": ("fmnist_lab.cv", "cv", "k-fold cross-validation of one config"),
    "report": ("fmnist_lab.report", None, "compare runs: table, params-vs-accuracy plot"),
    "reproduce": ("fmnist_lab.reproduce", None, "train or report a recipe's seeds"),
    "export": ("fmnist_lab.export", None, "write a study's finalists as experiment recipes"),
    "tta": ("fmnist_lab.tta", None, "test logged runs again with test-time augmentation"),
    "predict": ("fmnist_lab.predict", None, "classify your own images with a logged model"),
    "serve": ("fmnist_lab.serve", None, "the prediction web page and API"),
    "server": ("fmnist_lab.server", None, "an MLflow tracking server"),
    "bench": ("fmnist_lab.bench", None, "training throughput and sweep benchmarks"),
}
HELP = ("-h", "--help")


def usage() -> str:
    width = max(map(len, VERBS))
    rows = "\n".join(f"  {verb:<{width}}  {line}" for verb, (_, _, line) in VERBS.items())
    return (
        "usage: fmnist-lab <verb> [args]\n\n"
        "Sweeps and experiment tracking for Fashion-MNIST and MNIST.\n\n"
        f"verbs:\n{rows}\n\n"
        "`fmnist-lab <verb> --help` says more; `python -m fmnist_lab.<verb>` is the same.\n"
        "train, sweep and cv take Hydra overrides (key=value), e.g.\n"
        "  fmnist-lab train model=convnet trainer.max_epochs=3\n"
        "  fmnist-lab sweep sweep=quick workers=2\n"
        "the others take --flags, e.g. fmnist-lab report --study quick"
    )


def config_help(verb: str, config: str) -> str:
    """Help for a Hydra verb, read from conf/ without loading Hydra: its groups and options."""
    what = VERBS[verb][2]
    groups = []
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        if verb != "sweep" and folder.name == "sweep":
            continue
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        groups.append(f"  {folder.name:<13} {', '.join(options)}")
    return (
        f"usage: fmnist-lab {verb} [key=value ...]\n\n"
        f"{what[0].upper()}{what[1:]}. The config is conf/{config}.yaml; any key can be set\n"
        f"on the command line (trainer.max_epochs=3), and a group picks one of its files:\n\n"
        + "\n".join(groups)
        + f"\n\nfmnist-lab {verb} --cfg job prints the composed config; "
        f"python -m {VERBS[verb][0]} --hydra-help\nshows Hydra's own options."
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in HELP:
        print(usage())
        sys.exit(0 if argv else 2)
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"fmnist-lab: '{verb}' is not a verb; one of {', '.join(VERBS)}", file=sys.stderr)
        sys.exit(2)
    module, config, _ = VERBS[verb]
    if config is not None and any(a in HELP for a in args):
        print(config_help(verb, config))
        return
    sys.argv = [f"fmnist-lab {verb}", *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
