"""What a model learned, shown: the data (``analysis``), Grad-CAM (``gradcam``) and the
HTML report of a run (``report``). They import matplotlib and Captum: import the
modules themselves, or the names from ``cifar_resnet``, which loads them on first use."""
