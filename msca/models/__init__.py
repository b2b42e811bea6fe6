"""The models of the paper: generator (VGG features, label encoder, MSCA alignment, SPADE
synthesis), the Appendix G feature decoder, the conditioned multi-scale discriminator, and the
Eq. 11 losses. `build_generator(opt)`, `build_discriminator(opt)`, `build_decoder(opt)` and
`build_loss(opt, vgg)` construct them from an `msca.options.Options`."""
from __future__ import annotations

from .alignment import ALIGNMENTS, GAPAlignment, LabelMatchingAlignment
from .decoder import DEFAULT_DECODER_WEIGHTS, FeatureDecoder, pretrain_loss
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator, one_hot
from .encoders import FeatureCompression, LabelEncoder, resize_labels, scale_sizes
from .generator import NUM_SCALES, Features, MSCAGenerator, SPADEResBlock
from .losses import (SynthesisLoss, Task, feature_matching_loss, hinge_d_loss, hinge_g_loss,
                     total)
from .style_code import GENERATORS, StyleCodeGenerator, StyleEncoder
from .vgg import (PERCEPTUAL_LAYERS, PERCEPTUAL_WEIGHTS, SCALE_CHANNELS, SCALE_LAYERS, VGG19,
                  VGGLoss, VGGWeightsWarning, build_vgg19, find_vgg19_weights,
                  load_vgg19_weights)


def build_generator(opt, vgg: VGG19 | None = None):
    """MSCAGenerator, or StyleCodeGenerator for opt.generator == "spade_vae"."""
    if opt.generator == "spade_vae":
        return StyleCodeGenerator(
            opt.num_classes, ignore_label=opt.ignore_label, z_dim=opt.z_dim,
            encoder_size=opt.crop_size, ngf=opt.ngf, ngf_mults=opt.ngf_mults,
            spade_norm=opt.spade_norm, spade_hidden=opt.spade_hidden,
            spectral_norm=opt.spectral_norm_G, backend=opt.backend, vgg=vgg,
            vgg_weights=opt.vgg_weights or None, init_type=opt.init_type,
            init_gain=opt.init_gain)
    return MSCAGenerator(
        opt.num_classes, ignore_label=opt.ignore_label, image_feature_nc=opt.image_feature_nc,
        label_feature_nc=opt.label_feature_nc, attention_k=opt.attention_k,
        mask_hidden=opt.mask_hidden, alignment=opt.alignment,
        feature_masking=opt.feature_masking, ngf=opt.ngf, ngf_mults=opt.ngf_mults,
        spade_norm=opt.spade_norm, spade_hidden=opt.spade_hidden,
        spectral_norm=opt.spectral_norm_G, backend=opt.backend, vgg=vgg,
        vgg_weights=opt.vgg_weights or None, init_type=opt.init_type, init_gain=opt.init_gain,
        attention_logit_scale=opt.attention_logit_scale or None,
        attention_global_maps=opt.attention_global_maps,
        attention_presence=opt.attention_presence)


def build_discriminator(opt) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(
        opt.num_classes, ignore_label=opt.ignore_label, ndf=opt.ndf, n_layers=opt.n_layers_D,
        num_D=opt.num_D, spectral_norm=opt.spectral_norm_D, init_type=opt.init_type,
        init_gain=opt.init_gain)


def build_decoder(opt) -> FeatureDecoder:
    label_nc = tuple(m + int(opt.attention_presence) for m in opt.label_feature_nc)
    return FeatureDecoder(opt.image_feature_nc, label_nc,
                          loss_weights=opt.decoder_loss_weights)


def build_loss(opt, vgg: VGG19 | None) -> SynthesisLoss:
    """Eq. 11's loss; pass the generator's VGG (`generator.vgg`) to share one network."""
    return SynthesisLoss(vgg, lambda_feat=opt.lambda_feat, lambda_vgg=opt.lambda_vgg,
                         lambda_global=opt.lambda_global)


__all__ = [
    "ALIGNMENTS", "DEFAULT_DECODER_WEIGHTS", "Features", "FeatureCompression", "FeatureDecoder",
    "GAPAlignment", "GENERATORS", "StyleCodeGenerator", "StyleEncoder", "LabelEncoder", "LabelMatchingAlignment", "MSCAGenerator",
    "MultiscaleDiscriminator", "NLayerDiscriminator", "NUM_SCALES", "PERCEPTUAL_LAYERS",
    "PERCEPTUAL_WEIGHTS", "SCALE_CHANNELS", "SCALE_LAYERS", "SPADEResBlock", "SynthesisLoss",
    "Task", "VGG19", "VGGLoss", "VGGWeightsWarning", "build_decoder", "build_discriminator",
    "build_generator", "build_loss", "build_vgg19", "feature_matching_loss",
    "find_vgg19_weights", "hinge_d_loss", "hinge_g_loss", "load_vgg19_weights", "one_hot",
    "pretrain_loss", "resize_labels", "scale_sizes", "total",
]
