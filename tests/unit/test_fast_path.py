"""The fast path's settings and the work it saves: the models' dtype, the empty prompt encoded once."""

import pytest
import torch

from pipeline.cli.options import run_config
from pipeline.config import ConfigError
from pipeline.runtime import resolve_dtype
from stages.generate import Diffusion


def test_auto_dtype_is_half_on_a_gpu_and_float32_on_a_cpu_and_a_named_one_is_kept():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16 and resolve_dtype("float32", "cuda") == torch.float32


def test_dtype_and_compile_flags_reach_the_config_and_compile_leaves_the_fingerprint(tmp_path):
    base = run_config(vocab="voc", out=tmp_path, models="sd15", seed=0, device="auto")
    flagged = run_config(vocab="voc", out=tmp_path, models="sd15", seed=0, device="auto", dtype="bfloat16",
                         compile=True)
    assert base.preset.dtype == "auto" and flagged.preset.dtype == "bfloat16" and flagged.compile
    assert flagged.fingerprint() != base.fingerprint()  # another dtype makes other samples
    assert base.model_copy(update={"compile": True}).fingerprint() == base.fingerprint()
    with pytest.raises(ConfigError, match="dtype: Input should be 'auto', 'float32', 'float16' or 'bfloat16'"):
        run_config(vocab="voc", out=tmp_path, models="sd15", seed=0, device="auto", dtype="float8")


def test_the_empty_prompt_is_encoded_once_and_leads_every_guided_batch(tiny_pipe):
    diffusion = Diffusion(tiny_pipe, steps=2, guidance=7.5, capture_step=1)
    rows = []
    handle = tiny_pipe.text_encoder.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        first = diffusion.encode_prompts(["a photograph of a dog", "a photograph of a cat"])
        second = diffusion.encode_prompts(["a photograph of a cat"])
    finally:
        handle.remove()
    assert rows == [1, 2, 1]  # the empty prompt once, then only the prompts themselves
    assert first.shape[0] == 4 and second.shape[0] == 2
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)
    torch.testing.assert_close(second[0], first[0], rtol=0, atol=0)
    torch.testing.assert_close(second[1], first[3])  # the same prompt in another batch
