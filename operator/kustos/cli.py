"""The `kustos` command: one entry point for the operator and everything in the pods.

Each subcommand lives in its own module with its own argument parser and a
``main(argv) -> int``; this module only dispatches, so that `kustos serve` never
imports the Kubernetes client and `kustos run` never imports scikit-learn.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("kustos.controllers.run", "run the operator (kopf) against the current cluster"),
    "crds": ("kustos.api.crdgen", "print the CustomResourceDefinitions as YAML"),
    "fetch": ("kustos.runtime.fetch", "download a model or data file and verify its digest"),
    "sign": ("kustos.runtime.sign", "sign a model for publishing (OpenSSF model signing)"),
    "encrypt": ("kustos.runtime.encrypt", "encrypt a model with a Vault/OpenBao Transit key"),
    "batch": ("kustos.runtime.batch.cli", "predict a whole file in chunks (BatchInference)"),
    "serve": ("kustos.runtime.server.cli", "serve one model over KServe V2/V1 and Seldon"),
    "payload-relay": ("kustos.runtime.server.relay_cli",
                      "the payload-log container: sends the model server's predictions "
                      "as CloudEvents"),
    "explain": ("kustos.runtime.explain.cli", "the explainer sidecar: SHAP attributions"),
    "drift": ("kustos.runtime.drift.cli", "the drift sidecar: alibi-detect on the served inputs"),
    "truth": ("kustos.runtime.truth.cli", "the ground-truth monitor: accuracy from labels"),
    "status": ("kustos.governance.inventory", "list every ModelDeployment you can see"),
    "rollback": ("kustos.governance.rollback", "roll a ModelDeployment back to a version"),
    "rollout": ("kustos.rollout_cli", "status, promote, abort, pause, resume a gated rollout"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: kustos COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `kustos COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from kustos import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"kustos: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
