"""The backbones `model.backbone` names: keras.applications networks and one small plain CNN.

Every backbone takes the three-channel image its preprocessing produced (network.py) and returns
its last convolutional feature map (no pooling, no top): the head pools it, and Grad-CAM reads it
(pneumonia.inference.gradcam splits the model at the backbone's output).

- densenet201 (the paper), densenet121, resnet50: keras.applications, ImageNet weights or random.
- efficientnetb0, mobilenetv3small: lighter keras.applications networks, for training from
  random weights on a CPU. Both rescale their input inside the network (EfficientNet's
  Rescaling + Normalization, MobileNetV3's include_preprocessing), so our preprocessing leaves
  the 0..255 pixels as they are for them.
- small_cnn: a VGG-style plain CNN (~0.6 M parameters) for a machine without a GPU: a strided
  stem, four stages of two 3x3 convolutions with BatchNorm and ReLU, max-pooling between
  stages. No pretrained weights exist for it (`model.weights` must be `none`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

# Backbones whose ImageNet weights keras.applications can download (include_top=False).
WEIGHTS_URL = {
    "densenet121": "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "densenet201": "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
    "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnetb0": "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
    "mobilenetv3small": "https://storage.googleapis.com/tensorflow/keras-applications/"
    "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
}

# keras.applications preprocess_input, per backbone, as (scale, mean, std) applied after the
# gray -> RGB copy: y = (x * scale - mean) / std, per channel in the backbone's channel order.
# DenseNet uses 'torch' mode: x / 255, then ImageNet mean/std in RGB order.
_TORCH = (1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# ResNet50 uses 'caffe' mode: RGB -> BGR, then subtract the BGR ImageNet means, no scaling. Our
# three channels are copies of one gray channel, so the RGB -> BGR flip is a no-op and only the
# BGR-ordered means remain.
_CAFFE = (1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
# EfficientNet and MobileNetV3 take 0..255 and rescale inside the network: identity here.
_INSIDE = (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
PREPROCESSING = {
    "densenet121": _TORCH, "densenet201": _TORCH, "resnet50": _CAFFE,
    "efficientnetb0": _INSIDE, "mobilenetv3small": _INSIDE,
    "small_cnn": (1 / 255.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),  # ~zero mean, unit scale
}


def build_backbone(name: str, weights: str | None, image_size: int) -> keras.Model:
    """The backbone `name` for (image_size, image_size, 3) inputs, without top or pooling."""
    import keras

    shape = (image_size, image_size, 3)
    if name == "small_cnn":
        return small_cnn(shape)
    if name == "mobilenetv3small":
        # include_preprocessing=True (the default): Rescaling(1/127.5, offset=-1) inside.
        return keras.applications.MobileNetV3Small(
            include_top=False, weights=weights, input_shape=shape, minimalistic=False)
    constructor = {
        "densenet121": keras.applications.DenseNet121,
        "densenet201": keras.applications.DenseNet201,
        "resnet50": keras.applications.ResNet50,
        "efficientnetb0": keras.applications.EfficientNetB0,
    }[name]
    return constructor(include_top=False, weights=weights, input_shape=shape)


def small_cnn(shape: tuple[int, int, int], widths: tuple[int, ...] = (32, 64, 128, 192)
              ) -> keras.Model:
    """A plain CNN: Conv(24, stride 2) stem, then per width two Conv3x3-BN-ReLU and a 2x2
    max-pool (none after the last stage, whose output is the Grad-CAM feature map)."""
    import keras
    from keras import layers

    def conv_bn_relu(x: keras.KerasTensor, filters: int, name: str, strides: int = 1
                     ) -> keras.KerasTensor:
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input(shape, name="image")
    x = conv_bn_relu(inputs, 24, "stem", strides=2)
    for i, width in enumerate(widths, start=1):
        x = conv_bn_relu(x, width, f"stage{i}a")
        x = conv_bn_relu(x, width, f"stage{i}b")
        if i < len(widths):
            x = layers.MaxPooling2D(name=f"stage{i}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")
