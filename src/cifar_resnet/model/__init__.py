"""The network: David Page's ResNet-9 (``custom_resnet``), its CPU convolution
(``cpu_conv``) and its summary table (``summary``)."""

from .custom_resnet import CustomResNet, count_parameters
from .summary import model_summary

__all__ = ["CustomResNet", "count_parameters", "model_summary"]
