"""The grounding module: shapes, independence of samples and classes, frozen class text, loss, learning,
checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from stages.grounding.model import (
    ClassTextEncoder,
    GroundingConfig,
    GroundingModule,
    grounding_loss,
    load_grounding,
    save_grounding,
)
from testbed.random_presets import clip_tokenizer

TEMPLATE = "a photograph of a {}"


def tiny_config(**kw) -> GroundingConfig:
    base = dict(feature_channels={4: 64, 8: 64, 16: 32}, text_dim=32, image_size=32,
                reduce_channels=(16, 8, 8), width=32, heads=8, layers=3, patch_size=4)
    return GroundingConfig(**{**base, **kw})


def features(batch: int, seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {r: torch.randn(batch, c, r, r, generator=g) for r, c in tiny_config().feature_channels.items()}


def rounding_tolerance(expected: torch.Tensor, terms: int) -> dict:
    """``assert_close`` tolerances for one float32 computation run batched and one at a time.

    The two runs do the same sums in different orders (kernels block and vectorise by batch size, CPU
    instruction set and thread count), and that is all float32 promises: each operation is correctly
    rounded (relative error <= eps/2), so two orders of a sum of n values differ by at most about
    n * eps * sum(|values|). The error is on the scale of the values summed, not of the result: an
    output near zero (terms cancelling) gets the same absolute error as a large one, which no
    per-element rtol covers, and a fixed atol is right at one output scale only. So the tolerance is
    absolute, ``terms`` * eps * the output's scale (max |expected|), with ``terms`` the longest sum on the
    path. Normalisations and residual adds in between barely amplify relative error, and a reordered sum
    is typically off by ~sqrt(n) * eps, so the one-sum bound covers the chain. What these tests catch (a
    sample or class leaking into another, batch norm on batch statistics) moves outputs by a sizeable
    fraction of the scale, far above the tolerance.
    """
    return {"atol": terms * torch.finfo(expected.dtype).eps * expected.abs().max().item(), "rtol": 0.0}


def longest_sum(config: GroundingConfig) -> int:
    """Terms in the module's longest float32 sum: the patchify conv (visual channels x patch area; 512 in
    tiny_config), the 3x3 mixing convs, the decoder's feed-forward layer and attention, a 1x1 reduction."""
    c = config
    return max(c.visual_channels * c.patch_size ** 2, 9 * c.visual_channels, 4 * c.width,
               (c.finest // c.patch_size) ** 2, *c.feature_channels.values())


@pytest.fixture(scope="module")
def text() -> ClassTextEncoder:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, vocab_size=49408, max_position_embeddings=77))
    model.train()  # the wrapper must put it in eval mode
    return ClassTextEncoder(model, clip_tokenizer())


@pytest.mark.parametrize("k", [1, 3])
def test_output_shapes(k):
    torch.manual_seed(0)
    module = GroundingModule(tiny_config())
    out = module(features(2), torch.randn(2, k, 32))
    assert out.shape == (2, k, 32, 32)
    assert module.visual_map(features(2)).shape == (2, 32, 16, 16)  # 16 + 8 + 8 channels at the finest
    assert module(features(2), torch.randn(k, 32)).shape == (2, k, 32, 32)  # broadcast over batch


def test_paper_sized_default_visual_map():
    cfg = GroundingConfig(feature_channels={8: 8, 16: 8, 32: 8, 64: 8}, text_dim=768, image_size=512)
    assert cfg.visual_channels == 240 and (cfg.width, cfg.heads, cfg.layers, cfg.patch_size) == (512, 8, 3, 4)
    module = GroundingModule(cfg)
    # official code: 16 channels for the coarsest features ... 128 for the finest
    assert module.reduce["8"].out_channels == 16 and module.reduce["64"].out_channels == 128
    assert [m.conv1.in_channels for m in module.mix] == [48, 112, 240]
    assert module.visual_map({r: torch.zeros(2, 8, r, r) for r in (8, 16, 32, 64)}).shape == (2, 240, 64, 64)
    assert module.patchify.weight.shape == (512, 240, 4, 4) and module.patchify.bias is None
    assert module.text_proj.bias is None and module.decoder.layers[0].norm_first
    assert module.decoder.layers[0].linear1.out_features == 2048
    assert module.mask_mlp[-1].out_features == 240
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in module.modules())


def test_conditional_batch_norm_makes_the_visual_map_depend_on_the_class():
    torch.manual_seed(0)
    module = GroundingModule(tiny_config(conditional_bn=True))
    with torch.no_grad():  # gains start at zero: plain batch norm until trained
        for mix in module.mix:
            for norm in (mix.norm1, mix.norm2):
                norm.gain.weight.normal_()
                norm.bias.weight.normal_()
    feats, emb = features(2), torch.randn(2, 3, 32)
    assert module(feats, emb).shape == (2, 3, 32, 32)
    a = module.visual_map(feats, emb[:, 0])
    b = module.visual_map(feats, emb[:, 1])
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="condition"):
        module.visual_map(feats)
    module.eval()
    with torch.no_grad():  # still decoded independently per class
        together = module(feats, emb)
        alone = torch.cat([module(feats, emb[:, j: j + 1]) for j in range(3)], dim=1)
    torch.testing.assert_close(together, alone, **rounding_tolerance(alone, longest_sum(module.config)))


def test_batch_equals_per_sample_in_eval():
    torch.manual_seed(0)
    module = GroundingModule(tiny_config())
    module.train()
    module(features(4, seed=5), torch.randn(4, 2, 32)).sum().backward()  # update BN running stats
    module.eval()
    feats, emb = features(3, seed=1), torch.randn(3, 2, 32)
    with torch.no_grad():
        batched = module(feats, emb)
        single = torch.cat([module({r: f[i: i + 1] for r, f in feats.items()}, emb[i: i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, **rounding_tolerance(single, longest_sum(module.config)))
    assert not torch.allclose(batched[0], batched[1])


def test_classes_are_decoded_independently():
    torch.manual_seed(0)
    module = GroundingModule(tiny_config()).eval()
    feats, emb = features(2), torch.randn(2, 3, 32)
    with torch.no_grad():
        together = module(feats, emb)
        alone = torch.cat([module(feats, emb[:, j: j + 1]) for j in range(3)], dim=1)
    torch.testing.assert_close(together, alone, **rounding_tolerance(alone, longest_sum(module.config)))
    assert not torch.allclose(together[:, 0], together[:, 1])


def test_config_validation_and_json_round_trip():
    with pytest.raises(ValueError, match="reduce_channels"):
        tiny_config(reduce_channels=(16, 8))
    with pytest.raises(ValueError, match="reduce_channels"):
        GroundingConfig(feature_channels={8: 4, 16: 4}, text_dim=8, image_size=32)  # default has 4 entries
    cfg = tiny_config()
    again = GroundingConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and list(again.feature_channels) == [4, 8, 16]


def test_bad_features_are_rejected():
    module = GroundingModule(tiny_config())
    feats = features(1)
    with pytest.raises(ValueError, match="resolutions"):
        module({4: feats[4], 8: feats[8]}, torch.randn(1, 32))
    with pytest.raises(ValueError, match="resolution 16"):
        module({**feats, 16: torch.randn(1, 31, 16, 16)}, torch.randn(1, 32))


def test_text_encoder_is_frozen(text):
    assert not text.text_encoder.training
    assert not any(p.requires_grad for p in text.text_encoder.parameters())
    module = GroundingModule(tiny_config())
    emb = text.encode(["dog", "potted plant"])
    assert emb.shape == (2, 32) and not emb.requires_grad
    loss = grounding_loss(module(features(1), emb), torch.ones(1, 2, 32, 32), torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    assert all(p.grad is None for p in text.text_encoder.parameters())
    assert module.text_proj.weight.grad is not None and module.text_proj.weight.grad.abs().sum() > 0
    encoder_ids = {id(p) for p in text.text_encoder.parameters()}
    assert not encoder_ids & {id(p) for p in module.parameters()}


def test_multi_token_name_positions(text):
    tok = text.tokenizer
    name = "potted plant"
    name_ids = tok(name, add_special_tokens=False).input_ids
    prefix_ids = tok("a photograph of a", add_special_tokens=False).input_ids
    assert len(name_ids) >= 2 and len(prefix_ids) == 4
    ids, start, end = text.token_span(name, TEMPLATE)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert (start, end) == (5, 5 + len(name_ids)) and ids[start:end] == name_ids
    assert tok.decode(ids[start:end]).strip() == name
    # the embedding is the mean of exactly those hidden states (unpadded run: causal attention)
    with torch.no_grad():
        hidden = text.text_encoder(torch.tensor([ids])).last_hidden_state[0]
    expected = hidden[start:end].mean(0)  # longest sum: attention over the padded prompt, or the MLP
    config = text.text_encoder.config
    terms = max(text.max_length, config.intermediate_size, config.hidden_size)
    torch.testing.assert_close(text.encode([name])[0], expected, **rounding_tolerance(expected, terms))
    assert not torch.allclose(text.encode([name])[0], hidden[start:start + 1].mean(0))


def test_names_differ_and_are_cached(text):
    calls = []
    handle = text.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = text.encode(["cat", "dining table", "cat"])
        assert len(calls) == 1
        assert torch.equal(first[0], first[2]) and not torch.allclose(first[0], first[1])
        again = text.encode(["dining table", "cat"])
        assert len(calls) == 1  # served from the cache
        assert torch.equal(again, first[[1, 0]])
        other = text.encode(["cat"], "a photo of a {}")
        assert len(calls) == 2 and not torch.allclose(other[0], first[0])  # cache is per template
    finally:
        handle.remove()


def test_loss_ignores_invalid_entries():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    targets = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    valid = torch.tensor([[True, False, True], [False, True, False]])
    loss = grounding_loss(logits, targets, valid)
    changed = targets.clone()
    changed[~valid] = 1 - changed[~valid]
    assert torch.equal(loss, grounding_loss(logits, changed, valid))
    changed[0, 0] = 1 - changed[0, 0]
    assert not torch.equal(loss, grounding_loss(logits, changed, valid))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], targets[valid])
    torch.testing.assert_close(loss, expected)
    none = grounding_loss(logits, targets, torch.zeros(2, 3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()


@pytest.mark.usefixtures("one_torch_thread")
def test_learns_square_masks():
    torch.manual_seed(0)
    module = GroundingModule(tiny_config(layers=1))
    feats, emb = features(2, seed=3), torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(4))
    targets = torch.zeros(2, 2, 32, 32)
    targets[0, 0, 4:16, 4:16] = 1
    targets[0, 1, 10:30, 12:28] = 1
    targets[1, 0, 16:28, 2:20] = 1
    valid = torch.tensor([[True, True], [True, False]])
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = grounding_loss(module(feats, emb), targets, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    module.eval()
    with torch.no_grad():
        pred = torch.sigmoid(module(feats, emb)) > 0.5
    iou = (pred[valid] & targets[valid].bool()).sum() / (pred[valid] | targets[valid].bool()).sum()
    assert iou > 0.9


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    module = GroundingModule(tiny_config())
    module.train()
    module(features(2, seed=7), torch.randn(2, 1, 32))  # non-trivial BN running stats
    module.eval()
    save_grounding(module, tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_grounding(tmp_path / "g").eval()
    assert loaded.config == module.config
    feats, emb = features(2, seed=8), torch.randn(2, 3, 32)
    with torch.no_grad():
        assert torch.equal(module(feats, emb), loaded(feats, emb))


def test_load_errors_name_the_file(tmp_path):
    module = GroundingModule(tiny_config())
    save_grounding(module, tmp_path / "g")
    (tmp_path / "g" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        load_grounding(tmp_path / "g")
    with pytest.raises(ValueError, match="config.json"):
        load_grounding(tmp_path / "nowhere")
    save_grounding(module, tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    cfg["width"] = 64
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_grounding(tmp_path / "g")
    cfg["reduce_channels"] = [1]
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json"):
        load_grounding(tmp_path / "g")
    (tmp_path / "g" / "model.safetensors").write_bytes(b"not safetensors")
    cfg["reduce_channels"] = [16, 8, 8]
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_grounding(tmp_path / "g")
