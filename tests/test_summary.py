from cifar_resnet.model.custom_resnet import CustomResNet
from cifar_resnet.model.summary import model_summary


def test_summary_table_shows_blocks_shapes_and_the_reference_total():
    stats = model_summary(CustomResNet())
    table = str(stats)
    assert stats.trainable_params == 6_573_130
    assert "6,573,130" in table
    for name in ("prep_layer", "layer1", "layer2", "layer3", "head"):
        assert name in table
    assert "[1, 512, 4, 4]" in table
    assert "[1, 10]" in table


def test_the_multiply_add_count_has_no_enum_name_in_it():
    from cifar_resnet.model.custom_resnet import CustomResNet
    from cifar_resnet.model.summary import model_summary

    text = str(model_summary(CustomResNet()))
    assert "Units." not in text and "Total mult-adds: 379,266,442" in text
