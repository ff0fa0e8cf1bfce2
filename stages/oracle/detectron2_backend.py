"""The detectron2 backend of the oracle: a detectron2 Mask R-CNN (model-zoo R50/R101/X101-FPN, the
LSJ "new baselines", ViTDet, ...) from a config and a checkpoint.

detectron2 is optional and not on PyPI: ``stages.oracle.import_detectron2_backend()`` imports this
module only when a preset chooses this backend. Its category ids are contiguous (0..K-1 over the
thing classes of the config's test dataset); they reach the vocabulary's detector names through that
dataset's metadata (``thing_classes``), by name.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import detectron2.data  # registers the builtin datasets' metadata (COCO, LVIS, Cityscapes, ...)
import numpy as np
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.layers import paste_masks_in_image
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn
from torch.nn import functional as F

from stages.oracle.base import Candidates, Oracle, OracleBackendError
from stages.vocab import Vocabulary
from stages.weights import WeightsMissingError

CONFIG_SUFFIXES = (".yaml", ".py")  # a yacs config, or a LazyConfig (the new baselines, ViTDet)
WEIGHTS_SUFFIXES = (".pkl", ".pth")  # the model zoo's pickles, or a torch checkpoint

# detectron2's first forward pass makes torch warn about how detectron2 calls it (torch.meshgrid without
# indexing, is_fx_tracing); that is detectron2's business, not the user's.
logging.getLogger("torch.fx._symbolic_trace").addFilter(
    lambda record: not record.getMessage().startswith("is_fx_tracing will return true"))


def config_file(config: str) -> Path:
    """The file of a detectron2 config: a model-zoo name (relative to detectron2's configs/, e.g.
    ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``) or a .yaml / LazyConfig .py path."""
    path = Path(config).expanduser()
    if path.suffix not in CONFIG_SUFFIXES:
        raise OracleBackendError(f"detectron2 config {config}: expected a .yaml or LazyConfig .py file")
    if path.is_file():
        return path
    try:
        return Path(model_zoo.get_config_file(config))
    except RuntimeError:  # the model zoo's "not available in Model Zoo"
        raise OracleBackendError(f"detectron2 config {config}: no such file, and not a model-zoo config "
                                 "(e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml)") from None


def load_config(config: str):
    """A yacs ``CfgNode`` (.yaml) or a LazyConfig ``DictConfig`` (.py)."""
    path = config_file(config)
    try:
        if path.suffix == ".py":
            return LazyConfig.load(str(path))
        cfg = get_cfg()
        cfg.merge_from_file(str(path))
        return cfg
    except Exception as err:  # noqa: BLE001 - yacs and LazyConfig (which runs the file) raise anything
        raise OracleBackendError(f"detectron2 config {config} cannot be loaded: "
                                 f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def _is_lazy(cfg) -> bool:
    return not isinstance(cfg, CfgNode)


def build_detectron2_model(cfg, score_threshold: float | None = None) -> nn.Module:
    """The config's model, randomly initialised, in eval mode on the CPU; a Mask R-CNN (a
    ``GeneralizedRCNN`` with a mask head) or OracleBackendError. ``score_threshold`` replaces the
    box predictors' test score threshold."""
    if _is_lazy(cfg):
        model = instantiate(cfg.model)
    else:
        cfg = cfg.clone()
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
    if not isinstance(model, GeneralizedRCNN) or not getattr(model.roi_heads, "mask_on", False):
        raise OracleBackendError(f"the detectron2 config builds a {type(model).__name__} without instance masks: "
                                 "the oracle needs a Mask R-CNN (GeneralizedRCNN with a mask head, MODEL.MASK_ON)")
    if score_threshold is not None:
        for module in model.modules():
            if isinstance(module, FastRCNNOutputLayers):
                module.test_score_thresh = score_threshold
    return model.eval()


class _Checkpointer(DetectionCheckpointer):
    """detectron2's checkpointer, keeping what did not fit instead of logging it and going on with
    random weights for those parameters."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a .pkl (detectron2's model zoo, Caffe2 names converted) or .pth checkpoint into ``model``;
    WeightsMissingError when the file is missing, unreadable or leaves any parameter unloaded."""
    path = Path(weights).expanduser()
    if path.suffix not in WEIGHTS_SUFFIXES:
        raise WeightsMissingError(f"oracle weights {path}: expected a detectron2 .pkl or .pth checkpoint")
    if not path.is_file():
        raise WeightsMissingError(f"oracle weights {path} do not exist (--oracle-weights)")
    checkpointer = _Checkpointer(model)
    try:
        checkpointer.load(str(path))
    except Exception as err:  # noqa: BLE001 - corrupt file: pickle, torch and the checkpointer raise their own types
        raise WeightsMissingError(f"oracle weights {path} cannot be read: "
                                  f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    bad = checkpointer.incompatible
    if bad is not None and (bad.missing_keys or bad.incorrect_shapes):
        first = bad.missing_keys[:1] or [bad.incorrect_shapes[0][0]]
        raise WeightsMissingError(f"oracle weights {path} do not fit the detectron2 config's model: "
                                  f"{len(bad.missing_keys)} parameters missing, {len(bad.incorrect_shapes)} of "
                                  f"another shape (first: {first[0]})")


def input_resize(cfg) -> tuple[int, int]:
    """(short side, longest side) the config's model is tested at: INPUT.MIN/MAX_SIZE_TEST of a yacs
    config, the ResizeShortestEdge of a LazyConfig's test loader (0: no resize)."""
    if not _is_lazy(cfg):
        return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    try:
        augmentations = instantiate(cfg.dataloader.test.mapper.augmentations)
        (resize,) = augmentations
        short, longest = resize.short_edge_length, resize.max_size
        if short[0] != short[1]:
            raise ValueError("a range of sizes")
        return short[0], longest
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise OracleBackendError("the detectron2 LazyConfig's test input size is not one ResizeShortestEdge in "
                                 "dataloader.test.mapper.augmentations: set oracle_input_size") from err


def config_categories(cfg) -> tuple[str, ...]:
    """The thing classes of the config's (first) test dataset, by contiguous id, from detectron2's
    metadata catalog (the builtin datasets are registered on import)."""
    names = cfg.dataloader.test.dataset.names if _is_lazy(cfg) else cfg.DATASETS.TEST
    name = names if isinstance(names, str) else (list(names) or [None])[0]
    classes = detectron2.data.MetadataCatalog.get(name).get("thing_classes") if name else None
    if not classes:
        raise OracleBackendError(f"the detectron2 config's test dataset {name!r} has no registered categories "
                                 "(thing_classes): use a config tested on a builtin dataset (COCO, LVIS, ...)")
    return tuple(classes)


def output_shape(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge: the short side to ``short``, the long side at most ``longest``."""
    if short <= 0:
        return height, width
    return ResizeShortestEdge.get_output_shape(height, width, short, longest)


class Detectron2Oracle(Oracle):
    """The oracle on a detectron2 Mask R-CNN; ``categories``: its thing classes by contiguous id;
    ``resize``: (short side, longest side) its input is resized to, as its test loader does."""

    backend = "detectron2"

    def __init__(self, model: nn.Module, vocab: Vocabulary, categories: tuple[str, ...], resize: tuple[int, int],
                 score_threshold: float = 0.5, mask_threshold: float = 0.5, device: str | torch.device = "cpu"):
        super().__init__(vocab, categories, score_threshold, mask_threshold, device)
        classes = model.roi_heads.num_classes
        if classes != len(categories):
            raise OracleBackendError(f"the detectron2 model predicts {classes} classes but its dataset's metadata "
                                     f"names {len(categories)}")
        self.model = model.to(self.device).eval()
        self.resize = resize

    @torch.inference_mode()
    def candidates(self, images: np.ndarray) -> list[Candidates]:
        """One batched forward pass at the model's input size; boxes and masks back at image size."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        if self.model.input_format == "BGR":
            batch = batch.flip(1)
        height, width = batch.shape[-2:]
        size = output_shape(height, width, *self.resize)
        if size != (height, width):  # bilinear with antialiasing, as the test loader's PIL resize
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.meshgrid", UserWarning)
            outputs = self.model.inference([{"image": image} for image in batch], do_postprocess=False)
        return [self._at_image_size(out, height, width) for out in outputs]

    def _at_image_size(self, instances, height: int, width: int) -> Candidates:
        input_height, input_width = instances.image_size
        scale = torch.tensor([width / input_width, height / input_height] * 2, device=self.device)
        boxes = instances.pred_boxes.tensor * scale
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        soft = instances.pred_masks  # (N, 1, M, M) probabilities in each box
        return Candidates(
            labels=instances.pred_classes, scores=instances.scores, boxes=boxes,
            masks=lambda chosen: paste_masks_in_image(soft[chosen, 0], boxes[chosen], (height, width),
                                                      threshold=self.mask_threshold))


def load_detectron2_oracle(config: str, weights: str | Path | None, vocab: Vocabulary, input_size: int | None,
                           score_threshold: float, device: str | torch.device = "cpu",
                           mask_threshold: float = 0.5) -> Detectron2Oracle:
    """The detectron2 oracle of ``config`` with ``weights`` (None: random, for tests), resizing its
    input as the config's test loader does, or to ``input_size`` (short and long side) when given."""
    cfg = load_config(config)
    model = build_detectron2_model(cfg, score_threshold)
    if weights is not None:
        load_weights(model, weights)
    resize = (input_size, input_size) if input_size is not None else input_resize(cfg)
    return Detectron2Oracle(model, vocab, config_categories(cfg), resize, score_threshold=score_threshold,
                            mask_threshold=mask_threshold, device=device)
