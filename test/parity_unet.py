#!/usr/bin/python3
"""PyTorch parity of medtl's U-Nets (run with Debian's /usr/bin/python3).

The reference is written here, not taken from a library: a U-Net as
segmentation_models_pytorch's Unet (decoder_channels (256, 128, 64, 32,
16), batch norm) on a torchvision encoder without its classifier:

  encoder   resnet18/34: the ReLU after bn1 (stride 2), layer1..4;
            mobilenet_v2: features, outputs of features.1, .3, .6, .13, .18
  decoder   block i: F.interpolate(scale_factor=2, mode="bilinear",
            align_corners=False) or ConvTranspose2d(c, c, 2, stride=2)
            (_tconv), torch.cat([x, skip], 1) with the encoder feature of
            that stride (none for block 4), then (Conv2d 3x3 padding 1 no
            bias, BatchNorm2d, ReLU) twice
  head      Conv2d(16, classes, 3, padding=1)

with state_dict names encoder.*, decoder.blocks.{i}.{up,conv1,conv2}.*,
segmentation_head.*.  Weights: torch's default init (seeded), then every
BN gets a random affine and running statistics calibrated on another batch
and perturbed (as test/parity_train.py), the ConvTranspose2d and head
biases random.  medtl runs test/bin/train_step (make tools).

Checks:
  forward   every arch (6) at 64x64 and at 64x96, batch 2, eval mode:
            medtl's inference logits (BN folded) vs torch's, relative error
            max|diff| / max|torch| <= 1e-4
  step      one training step, SGD(lr 0.05, momentum 0.9, weight_decay
            1e-4), loss = CE (ignore_index 255) + soft Dice over the
            foreground classes (formula in seg_loss below, the one
            documented for mt_loss_segmentation), masks with ignored
            pixels; three cases: encoder frozen (requires_grad False and
            its BN in eval(), medtl's default); every convolution training
            with every BN on running statistics (BN weights frozen, BN in
            eval(), biases training: the encoder's gradients through the
            skip connections); and a full fine-tune
            (model.train()), on
            unet_resnet18 (bilinear) and unet_mobilenet_v2_tconv, batch 4
            at 64x64: loss and training logits <= 1e-4, every gradient and
            updated tensor <= 1e-3 against torch float32.

Conditioning.  As in test/parity_train.py, a tensor whose torch float32
result is itself more than 1e-4 from float64 (a ReLU6 input within rounding
of a kink) is compared with float64 and must be within max(1e-3, 4 x torch
float32's own error); otherwise the encoder-frozen case must meet 1e-3.  A full fine-tune of a freshly initialised
U-Net in training mode is chaotic: its BN layers normalise the deepest maps
over 16 values per channel, and so many ReLU/ReLU6 inputs lie near a kink
that moving the input by 1e-6 (float32 rounding of the activations) moves
float64's own gradients by up to 10% (and at 128x128 more, not less).  Any
two float32 implementations then differ by that much in places.  So a
tensor of the full fine-tune that misses 1e-3 against torch float32 is
compared with float64 and must be within max(1e-3, 4 x torch float32's
own error, 2 x the spread of float64's gradient under eight input
perturbations of 1e-6); the line says how many needed that rule.  The
same applies to the updated weights (a gradient's error shows there
scaled by lr), and to the case with every BN on running statistics: with
no batch statistics it is far less chaotic, but unet_resnet18 still has
ReLU inputs that close to 0 (float64's own gradients of encoder layer2 to
layer4 and of decoder block 2 move by 1e-3 to 2e-3 under such
perturbations, and oneDNN's summation order, against im2col + GEMM's,
moves medtl's by as much; two perturbations undercounted it, so there are
eight).  A gradient off by O(1) fails it; parity_train.py checks the same
convolution, BN and ReLU gradients on well-conditioned cases to 1e-3.

Output: "ok: ..." / "FAIL: ..." per check, last line
"parity_unet: N passed, M failed"; exit 1 on failures.  Arguments: arch
names to run only those.  About a minute on 2 cores.
"""
import os
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medtl_testlib import (Report, backward_and_step, bn_calibrate, bn_random_affine, float64_spread,  # noqa: E402
                           read_safetensors, rel, write_safetensors)

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "bin", "train_step")
SEED = 20240706
CLASSES = 3
TOL_FWD = 1e-4
TOL_LOSS = 1e-4
TOL = 1e-3
TOL_ILL = 1e-4          # torch f32 vs f64 above this: ill-conditioned tensor

report = Report("parity_unet")

ARCHS = ["unet_resnet18", "unet_resnet34", "unet_mobilenet_v2",
         "unet_resnet18_tconv", "unet_resnet34_tconv", "unet_mobilenet_v2_tconv"]
STEP_ARCHS = ["unet_resnet18", "unet_mobilenet_v2_tconv"]


class ResNetEncoder(nn.Module):
    def __init__(self, name):
        super().__init__()
        net = getattr(torchvision.models, name)()
        for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, k, getattr(net, k))
        self.channels = [64, 64, 128, 256, 512]

    def forward(self, x):
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]


class MobileNetV2Encoder(nn.Module):
    TAPS = (1, 3, 6, 13, 18)

    def __init__(self):
        super().__init__()
        self.features = torchvision.models.mobilenet_v2().features
        self.channels = [16, 24, 32, 96, 1280]

    def forward(self, x):
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x)
        return out


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin, skip, cout, tconv):
        super().__init__()
        self.tconv = tconv
        if tconv:
            self.up = nn.ConvTranspose2d(cin, cin, 2, stride=2)
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x, skip):
        if self.tconv:
            x = self.up(x)
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.conv2(self.conv1(x))


class Decoder(nn.Module):
    def __init__(self, enc_channels, tconv):
        super().__init__()
        dec = [256, 128, 64, 32, 16]
        skips = enc_channels[3::-1] + [0]          # strides 16, 8, 4, 2, none
        ins = [enc_channels[4]] + dec[:-1]
        self.blocks = nn.ModuleList(DecoderBlock(ins[i], skips[i], dec[i], tconv) for i in range(5))

    def forward(self, feats):
        x = feats[4]
        for i, b in enumerate(self.blocks):
            x = b(x, feats[3 - i] if i < 4 else None)
        return x


class UNet(nn.Module):
    def __init__(self, arch, classes):
        super().__init__()
        enc = arch[len("unet_"):].replace("_tconv", "")
        self.encoder = MobileNetV2Encoder() if enc == "mobilenet_v2" else ResNetEncoder(enc)
        self.decoder = Decoder(self.encoder.channels, arch.endswith("_tconv"))
        self.segmentation_head = nn.Conv2d(16, classes, 3, padding=1)

    def forward(self, x):
        return self.segmentation_head(self.decoder(self.encoder(x)))


def build(arch):
    torch.manual_seed(SEED)
    m = UNet(arch, CLASSES)
    g = torch.Generator().manual_seed(SEED + 1)
    bns = bn_random_affine(m, g)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.ConvTranspose2d, nn.Conv2d)) and mod.bias is not None:
                mod.bias.copy_(torch.rand(mod.bias.shape, generator=g) * 0.2 - 0.1)
    bn_calibrate(m, bns, g, (4, 3, 64, 64))
    return m


def seg_loss(logits, masks, ce_weight=1.0, dice_weight=1.0):
    """CE over the non-ignored pixels + soft Dice of the foreground classes,
    the sums over the whole batch, smoothing 1 (mt_loss_segmentation)."""
    c = logits.shape[1]
    valid = (masks != 255)
    ce = F.cross_entropy(logits, masks, ignore_index=255)
    p = logits.softmax(1) * valid[:, None]
    g = F.one_hot(torch.where(valid, masks, torch.zeros_like(masks)), c).permute(0, 3, 1, 2)
    g = g.to(logits.dtype) * valid[:, None]
    inter = (p * g).sum((0, 2, 3))
    dice = (2 * inter + 1) / (p.sum((0, 2, 3)) + g.sum((0, 2, 3)) + 1)
    return ce_weight * ce + dice_weight * (1 - dice[1:].mean())


def masks_for(n, h, w):
    g = torch.Generator().manual_seed(SEED + 7)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    m = torch.zeros(n, h, w, dtype=torch.int64)
    for i in range(n):
        cy, cx = int(torch.randint(8, h - 8, (1,), generator=g)), int(torch.randint(8, w - 8, (1,), generator=g))
        m[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 120] = 1
        m[i][(yy - h + cy) ** 2 + (xx - cx) ** 2 < 40] = 2
    m[torch.rand(n, h, w, generator=g) < 0.03] = 255
    return m


def run_driver(arch, wpath, bpath, opath, freeze, lr, momentum, wd):
    cmd = [DRIVER, arch, str(CLASSES), wpath, bpath, opath, "sgd", repr(lr),
           "none" if freeze == "bnweights" else freeze, "--momentum", repr(momentum), "--wd", repr(wd)]
    if freeze == "bnweights":
        cmd.append("--bn-weights-frozen")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("driver failed (rc %d): %s" % (r.returncode, r.stderr.strip()))
    return read_safetensors(opath)[0]


def check_forward(arch, h, w, tmp):
    name = "%s forward %dx%d" % (arch, h, w)
    model = build(arch).eval()
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(SEED + h + w))
    wpath = os.path.join(tmp, "w.safetensors")
    bpath = os.path.join(tmp, "b.safetensors")
    opath = os.path.join(tmp, "o.safetensors")
    write_safetensors(wpath, list(model.state_dict().items()))
    write_safetensors(bpath, [("x", x.permute(0, 2, 3, 1).contiguous()),
                              ("masks", masks_for(2, h, w))])
    with torch.no_grad():
        want = model(x).permute(0, 2, 3, 1)
    out = run_driver(arch, wpath, bpath, opath, "none", 0.0, 0.0, 0.0)
    got = out["infer_logits"]
    e = rel(got, want) if got.shape == want.shape else float("inf")
    report(e <= TOL_FWD, "%s: logits %s rel %.2e (max |logit| %.2f)"
           % (name, list(got.shape), e, float(want.abs().max())))


def frozen_names(model, freeze):
    if freeze == "backbone":
        return {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    if freeze == "bnweights":
        return {n + ".weight" for n, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    return set()


def torch_step(model, x, masks, freeze, lr, momentum, wd):
    frozen = frozen_names(model, freeze)
    model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    for n, mod in model.named_modules():
        if isinstance(mod, nn.BatchNorm2d) and n + ".weight" in frozen:
            mod.eval()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          momentum=momentum, weight_decay=wd)
    opt.zero_grad()
    logits = model(x)
    loss = seg_loss(logits, masks)
    grads, after = backward_and_step(model, opt, loss)
    return float(loss), logits.detach(), grads, after


def check_step(arch, freeze, tmp):
    name = "%s step (%s)" % (arch, {"none": "full fine-tune", "backbone": "encoder frozen",
                                    "bnweights": "every BN on running statistics"}[freeze])
    lr, momentum, wd = 0.05, 0.9, 1e-4
    n, h, w = 4, 64, 64
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(SEED + 3))
    masks = masks_for(n, h, w)
    model = build(arch)
    wpath = os.path.join(tmp, "w.safetensors")
    bpath = os.path.join(tmp, "b.safetensors")
    opath = os.path.join(tmp, "o.safetensors")
    write_safetensors(wpath, list(model.state_dict().items()))
    write_safetensors(bpath, [("x", x.permute(0, 2, 3, 1).contiguous()), ("masks", masks)])
    t_loss, t_logits, t_grads, t_after = torch_step(model, x, masks, freeze, lr, momentum, wd)
    d_loss, _, d_grads, d_after = torch_step(build(arch).double(), x.double(), masks, freeze, lr,
                                             momentum, wd)
    out = run_driver(arch, wpath, bpath, opath, freeze, lr, momentum, wd)

    # float64's own spread under input perturbations of 1e-6 (the cases
    # where the encoder trains)
    spread_g, spread_a = {}, {}
    if freeze in ("none", "bnweights"):
        spread_g, spread_a = float64_spread(
            lambda xp: torch_step(build(arch).double(), xp, masks, freeze, lr, momentum, wd)[2:],
            x, d_grads, d_after, SEED)

    problems = []
    loss_err = abs(float(out["loss"][0]) - t_loss) / max(abs(t_loss), 1e-6)
    if loss_err > TOL_LOSS:
        problems.append("loss %.6f vs %.6f (rel %.2e)" % (float(out["loss"][0]), t_loss, loss_err))
    e_logits = rel(out["logits"], t_logits.permute(0, 2, 3, 1))
    if e_logits > TOL_FWD:
        problems.append("training logits rel %.2e" % e_logits)
    m_grads = {k[5:]: v for k, v in out.items() if k.startswith("grad.")}
    if set(m_grads) != set(t_grads):
        report(False, "%s: gradient sets differ: medtl-only %s, torch-only %s" % (
            name, sorted(set(m_grads) - set(t_grads))[:3], sorted(set(t_grads) - set(m_grads))[:3]))
        return
    summary = []
    for what, med, t32, t64, spread in (
            ("gradients", {k: m_grads[k] for k in t_grads}, t_grads, d_grads, spread_g),
            ("updated", {k: out.get(k) for k in t_after}, t_after, d_after, spread_a)):
        worst, cond, worst_cond, fails = (0.0, ""), 0, (0.0, "", 0.0, 0.0), []
        for k in t32:
            if med[k] is None:
                fails.append("missing tensor %s" % k)
                continue
            mk = med[k].reshape(t32[k].shape)
            e32 = rel(mk, t32[k])
            if e32 <= TOL:
                worst = max(worst, (e32, k))
                continue
            e64, own = rel(mk, t64[k]), rel(t32[k], t64[k])
            allowed = max(TOL, 4 * own, 2 * spread.get(k, 0.0))
            if (own <= TOL_ILL and k not in spread) or e64 > allowed:
                fails.append("%s rel %.2e (vs float64 %.2e, torch float32 itself %.2e, float64 spread %.2e)"
                             % (k, e32, e64, own, spread.get(k, 0.0)))
                continue
            cond += 1
            worst_cond = max(worst_cond, (e64, k, own, spread.get(k, 0.0)))
        problems += ["%s: %s" % (what, f) for f in fails]
        msg_part = "%d %s worst %.2e (%s)" % (len(t32), what, worst[0], worst[1])
        if cond:
            msg_part += (", %d ill-conditioned: worst %.2e vs float64 (%s; torch float32 itself %.2e, "
                         "float64 spread %.2e)" % (cond, worst_cond[0], worst_cond[1], worst_cond[2], worst_cond[3]))
        summary.append(msg_part)
    msg = "%s: loss %.5f rel %.1e, logits %.1e; %s" % (name, t_loss, loss_err, e_logits, "; ".join(summary))
    if problems:
        msg += " -- " + "; ".join(problems[:4])
    report(not problems, msg)


def check_oracle():
    """The reference's bilinear decoder path is torch's own: F.interpolate
    on a ramp doubles it as the align_corners=False geometry says."""
    x = torch.arange(4.0).reshape(1, 1, 1, 4)
    y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    want = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    report(y.shape == (1, 1, 2, 8) and torch.allclose(y[0, 0, 0], want) and torch.allclose(y[0, 0, 1], want),
           "oracle: bilinear x2 of a ramp %s" % y[0, 0, 0].tolist())


def main():
    only = [a for a in sys.argv[1:] if a in ARCHS]
    if not os.access(DRIVER, os.X_OK):
        report(False, "no driver at %s (run make tools)" % DRIVER)
        report.finish()
    check_oracle()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in only or ARCHS:
            for h, w in ((64, 64), (64, 96)):
                try:
                    check_forward(arch, h, w, tmp)
                except Exception:
                    report(False, "%s forward %dx%d: %s" % (arch, h, w, traceback.format_exc().strip()))
        for arch in [a for a in STEP_ARCHS if not only or a in only]:
            for freeze in ("backbone", "bnweights", "none"):
                try:
                    check_step(arch, freeze, tmp)
                except Exception:
                    report(False, "%s step %s: %s" % (arch, freeze, traceback.format_exc().strip()))
    report.finish()


if __name__ == "__main__":
    main()
