"""Phase B's pieces: oracle shards streamed as training batches, and the training loop learning on them."""

import numpy as np
import pytest
import torch

from pipeline.dataset.samples import encode_sample, instance
from pipeline.dataset.shards import shard_path, write_shard
from pipeline.training.oracle_data import oracle_batches
from stages.errors import DataError
from stages.generate import Diffusion
from stages.grounding.model import ClassTextEncoder, GroundingConfig, GroundingModule, class_embeddings
from stages.grounding.train import GroundingTrainer, TrainOptions, fit
from stages.prompts import PromptSpec

SIZE, TIMESTEP = 64, 1
DOG = np.zeros((SIZE, SIZE), bool)
DOG[:, : SIZE // 2] = True  # the "oracle" always finds the dog on the left half


def oracle_sample(index: int, with_cat: bool) -> dict:
    spec = PromptSpec(index, f"a photograph of a dog and a cat, take {index}", ("dog", "cat"), index)
    instances = [instance(12, "dog", DOG, 0.9)] + ([instance(8, "cat", ~DOG, 0.8)] if with_cat else [])
    latent = np.random.default_rng(index).standard_normal((4, 16, 16)).astype(np.float32)
    return encode_sample(spec, [12, 8], np.zeros((SIZE, SIZE, 3), np.uint8), "jpg", "oracle:maskrcnn",
                         instances, {"capture_timestep": TIMESTEP}, latent=latent)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oracle")
    for shard_id in range(2):
        samples = [oracle_sample(i, with_cat=i % 2 == 0) for i in range(shard_id * 3, shard_id * 3 + 3)]
        write_shard(folder, shard_id, samples, {"start": shard_id * 3, "end": shard_id * 3 + 3})
    return [shard_path(folder, 0), shard_path(folder, 1)]


def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_batches_decode_targets_and_mark_classes_the_oracle_missed(shards, voc):
    batch = next(oracle_batches(shards, voc, batch_size=6, seed=0))
    assert batch["latents"].shape == (6, 4, 16, 16) and batch["timestep"] == TIMESTEP
    assert batch["targets"].shape == (6, 2, SIZE, SIZE) and batch["names"][0] == ["dog", "cat"]
    takes = [int(p.rsplit(" ", 1)[1]) for p in batch["prompts"]]
    assert sorted(takes) == list(range(6))  # one epoch holds every sample once
    for b, take_index in enumerate(takes):
        assert torch.equal(batch["targets"][b, 0].bool(), torch.from_numpy(DOG))
        assert batch["has_target"][b].tolist() == [True, take_index % 2 == 0]
        if take_index % 2:
            assert not batch["targets"][b, 1].any()
        expected = np.random.default_rng(take_index).standard_normal((4, 16, 16)).astype(np.float32)
        np.testing.assert_array_equal(batch["latents"][b].numpy(), expected)


def test_batch_order_is_a_function_of_the_seed(shards, voc):
    def order(seed):
        return [p for batch in take(oracle_batches(shards, voc, 2, seed), 6) for p in batch["prompts"]]

    assert order(3) == order(3)
    assert order(3) != order(4)
    first_epoch, second_epoch = order(3)[:6], order(3)[6:]
    assert sorted(first_epoch) == sorted(second_epoch) and first_epoch != second_epoch  # reshuffled


def test_empty_oracle_data_is_refused(tmp_path, voc):
    write_shard(tmp_path, 0, [], {"start": 0, "end": 1})
    with pytest.raises(ValueError, match="no training samples"):
        next(oracle_batches([shard_path(tmp_path, 0)], voc, 2, 0))


def test_a_sample_naming_an_unseen_class_is_refused_not_trained_on(tmp_path, voc):
    """Phase B's checkpoint is recorded zero-shot: an oracle shard holding an unseen class (sheep), which phase A
    never writes, stops the stream with one line naming it, its shard and key, before any batch."""
    spec = PromptSpec(0, "a photograph of a dog and a sheep", ("dog", "sheep"), 0)
    sheep = encode_sample(spec, [12, 17], np.zeros((SIZE, SIZE, 3), np.uint8), "jpg", "oracle:maskrcnn",
                          [instance(12, "dog", DOG, 0.9), instance(17, "sheep", ~DOG, 0.8)],
                          {"capture_timestep": TIMESTEP}, latent=np.zeros((4, 16, 16), np.float32))
    write_shard(tmp_path, 0, [oracle_sample(1, with_cat=True), sheep], {"start": 0, "end": 2})
    shard = shard_path(tmp_path, 0)
    with pytest.raises(DataError) as refused:
        next(oracle_batches([shard], voc, 2, seed=0))
    assert f"{shard} key 000000000000 names the unseen class 'sheep'" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.usefixtures("one_torch_thread")  # CPU-bound: 60 steps of UNet features + module training
def test_training_learns_the_oracle_masks(shards, voc, tiny_pipe):
    torch.manual_seed(0)
    diffusion = Diffusion(tiny_pipe, steps=10, guidance=7.5, capture_step=1)
    probe = diffusion.features_from_latent(torch.zeros(1, 4, 16, 16), TIMESTEP, [""])
    text = ClassTextEncoder(tiny_pipe.text_encoder, tiny_pipe.tokenizer)
    module = GroundingModule(GroundingConfig(
        feature_channels={r: f.shape[1] for r, f in probe.items()}, text_dim=tiny_pipe.text_encoder.config.hidden_size,
        image_size=SIZE, reduce_channels=(16, 8, 8), width=64, heads=8, layers=3, patch_size=2))
    steps = []
    trainer = GroundingTrainer(module, text, diffusion, voc.text_template, TrainOptions(steps=60, lr=1e-3))
    fit(trainer, oracle_batches(shards, voc, 3, seed=0), on_step=lambda s, loss: steps.append(s))
    losses = trainer.losses
    assert steps == list(range(1, 61)) and not module.training
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), (losses[:5], losses[-5:])

    batch = next(oracle_batches(shards, voc, 6, seed=1))
    features = diffusion.features_from_latent(batch["latents"], TIMESTEP, batch["prompts"])
    embeddings, _ = class_embeddings(text, batch["names"], voc.text_template, "cpu")
    with torch.no_grad():
        dog = torch.sigmoid(module({r: f.float() for r, f in features.items()}, embeddings))[:, 0] > 0.5
    target = torch.from_numpy(DOG).expand_as(dog)
    assert (dog & target).sum() / (dog | target).sum() > 0.9
