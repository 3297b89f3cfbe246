import dataclasses

import pytest

from cifar_resnet.config import (
    RECIPES,
    SPEC_EMA_DECAY,
    SPEC_LABEL_SMOOTHING,
    SPEC_WEIGHT_DECAY,
    TrainConfig,
)
from cifar_resnet.errors import ConfigError


def test_defaults_are_the_spec_table():
    c = TrainConfig()
    assert (c.epochs, c.peak_epoch, c.batch_size) == (24, 5, 512)
    assert (c.crop_padding, c.flip_prob, c.cutout_size) == (4, 0.5, 8)
    assert (c.width, c.norm, c.dropout) == (1.0, "batch", 0.0)
    assert c.max_lr is None and c.min_lr is None  # found by the range test
    assert (c.recipe, c.optimizer) == ("spec", "adam")
    # measured, as the spec leaves them open:
    assert (c.ema_decay, c.label_smoothing) == (SPEC_EMA_DECAY, SPEC_LABEL_SMOOTHING)
    assert (c.head_bias, c.logit_scale, c.tta) == (True, 1.0, False)
    assert c.crop_pad_mode == "zeros"  # torchvision's RandomCrop(padding=4) pads with zeros
    assert c.drop_last is False
    assert c.weight_decay == SPEC_WEIGHT_DECAY  # measured, as the spec leaves it open


def test_the_page_recipe_is_pages_published_settings():
    c = TrainConfig(recipe="page")
    assert (c.optimizer, c.momentum, c.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (c.max_lr, c.min_lr, c.peak_epoch, c.epochs, c.batch_size) == (0.4, 0.0, 5, 24, 512)
    assert (c.label_smoothing, c.head_bias, c.logit_scale, c.tta) == (0.2, False, 0.125, True)
    assert (c.crop_pad_mode, c.drop_last) == ("reflect", True)
    assert c.ema_decay == 0.0  # Page evaluates the weights as trained
    assert TrainConfig(recipe="page", crop_pad_mode="zeros").crop_pad_mode == "zeros"


def test_the_page_fast_recipe_is_pages_bag_of_tricks_in_ten_epochs():
    c = TrainConfig(recipe="page-fast")
    assert (c.epochs, c.peak_epoch, c.hold_epochs, c.end_lr_ratio) == (10, 2, 2, 0.1)
    assert (c.optimizer, c.max_lr, c.min_lr, c.weight_decay) == ("sgd", 1.0, 0.0, 5e-4)
    assert (c.activation, c.celu_alpha, c.ghost_batch) == ("celu", 0.3, 32)
    assert (c.freeze_bn_scale, c.bias_lr_factor, c.whiten) == (True, 64.0, True)
    assert (c.ema_decay, c.ema_every, c.logit_scale, c.cutout_size) == (0.99, 5, 0.0625, 0)
    assert (c.label_smoothing, c.head_bias, c.tta, c.drop_last) == (0.2, False, True, True)
    assert c.pool_after_relu is False  # his post's order: conv, pool, norm, activation
    # the tricks are off in the other recipes, and each is its own setting
    for recipe in ("spec", "page"):
        other = TrainConfig(recipe=recipe)
        assert (other.activation, other.ghost_batch, other.freeze_bn_scale) == ("relu", 0, False)
        assert (other.whiten, other.bias_lr_factor, other.ema_every) == (False, 1.0, 1)
        assert (other.hold_epochs, other.end_lr_ratio, other.cutout_size) == (0, 0.0, 8)
    assert TrainConfig(recipe="page-fast", whiten=False, cutout_size=8).cutout_size == 8


def test_tricks_that_cannot_go_together_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"--peak-epoch \(9\) .* less --hold-epochs \(2\)"):
        TrainConfig(recipe="page-fast", peak_epoch=9)
    with pytest.raises(ConfigError, match="--ghost-batch .* --norm group"):
        TrainConfig(recipe="page-fast", norm="group")
    with pytest.raises(ConfigError, match="--sync-bn .* --ghost-batch"):
        TrainConfig(recipe="page-fast", sync_bn=True)
    assert TrainConfig(recipe="page-fast", norm="group", ghost_batch=0).norm == "group"


def test_a_saved_config_older_than_the_tricks_loads_without_them():
    """A saved config without a trick's setting trained without it, whatever its recipe
    now fills in (``OPTIONS_ADDED``)."""
    from cifar_resnet.config import as_saved_run

    tricks = ("activation", "ghost_batch", "freeze_bn_scale", "whiten", "bias_lr_factor",
              "ema_every", "hold_epochs", "end_lr_ratio")  # fmt: skip
    saved = {k: v for k, v in TrainConfig(recipe="page-fast").to_dict().items() if k not in tricks}
    loaded = TrainConfig.from_dict(as_saved_run(saved))
    plain = TrainConfig(recipe="page")
    assert {k: getattr(loaded, k) for k in tricks} == {k: getattr(plain, k) for k in tricks}


def test_reflection_padding_must_be_narrower_than_the_image():
    assert TrainConfig(crop_pad_mode="reflect", crop_padding=31).crop_padding == 31
    with pytest.raises(ConfigError, match="must be below 32 with --crop-pad-mode reflect"):
        TrainConfig(crop_pad_mode="reflect", crop_padding=32)
    assert TrainConfig(crop_padding=32).crop_pad_mode == "zeros"  # zeros have no such limit


def test_given_values_override_the_recipe_and_survive_a_round_trip():
    c = TrainConfig(recipe="page", optimizer="adam", max_lr=3e-3, label_smoothing=0.0, tta=False)
    assert (c.optimizer, c.max_lr, c.label_smoothing, c.tta) == ("adam", 3e-3, 0.0, False)
    assert c.logit_scale == 0.125  # what was not given stays Page's
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig(recipe="spec", weight_decay=0.0).weight_decay == 0.0


def test_a_recipes_lrs_stay_with_its_optimizer():
    assert (TrainConfig(recipe="page").max_lr, TrainConfig(recipe="page").min_lr) == (0.4, 0.0)
    adam = TrainConfig(recipe="page", optimizer="adam")
    assert adam.max_lr is None and adam.min_lr is None  # SGD's 0.4: the range test decides
    assert adam.logit_scale == 0.125 and adam.label_smoothing == 0.2  # the rest stays Page's
    assert TrainConfig(recipe="page", optimizer="sgd").max_lr == 0.4


def test_is_frozen_and_round_trips_through_a_dict():
    c = TrainConfig(max_lr=1e-3, width=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 3
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="unknown config option"):
        TrainConfig.from_dict({"epochs": 3, "lr": 0.1})


def test_every_field_is_documented():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"epochs": 3, "peak_epoch": 4}, "--peak-epoch"),
        ({"peak_epoch": 0}, "--peak-epoch"),
        ({"batch_size": 0}, "--batch-size"),
        ({"max_lr": 0.0}, "--max-lr"),
        ({"max_lr": -1e-3}, "--max-lr"),
        ({"max_lr": 1e-3, "min_lr": 1e-2}, "--min-lr"),
        ({"width": 0.0}, "--width"),
        ({"norm": "instance"}, "--norm"),
        ({"dropout": 1.0}, "--dropout"),
        ({"recipe": "fast"}, "--recipe"),
        ({"optimizer": "rmsprop"}, "--optimizer"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"logit_scale": 0.0}, "--logit-scale"),
        ({"momentum": 1.0}, "--momentum"),
        ({"min_lr": -1e-4}, "--min-lr"),
        ({"cutout_size": 33}, "--cutout-size"),
        ({"limit_train": 0}, "--limit-train"),
        ({"seed": -1}, "--seed"),
        ({"device": "tpu"}, "--device"),
        ({"finder_start_lr": 1.0, "finder_end_lr": 0.5}, "--finder-start-lr"),
        ({"finder_start_lr": -1.0}, "--finder-start-lr"),
        ({"finder_num_iter": 9}, "--finder-num-iter"),
        ({"finder_rule": "median"}, "--finder-rule"),
    ],
)
def test_bad_values_name_the_flag_on_one_line(kwargs, flag):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)
    assert flag in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_after_construction_a_field_not_annotated_optional_holds_its_type(recipe):
    """Fields a recipe fills (default None: the recipe's value) are never None once built."""
    import typing

    hints = typing.get_type_hints(TrainConfig)
    config = TrainConfig(recipe=recipe)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if type(None) not in typing.get_args(hints[f.name]):
            assert value is not None, f.name
            assert isinstance(value, hints[f.name]) or (
                hints[f.name] is float and isinstance(value, int)
            ), f.name
