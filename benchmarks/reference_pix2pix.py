"""pix2pix's reference implementation, restated for the side-by-side benchmark (not used by the library).

Restated from junyanz/pytorch-CycleGAN-and-pix2pix (``models/networks.py``: ``UnetGenerator``,
``UnetSkipConnectionBlock``, ``NLayerDiscriminator``, ``GANLoss``; ``models/pix2pix_model.py``:
``optimize_parameters``), with the options of ``--model pix2pix``: ``unet_256`` (8 downsamplings; ``unet_128``: 7),
``basic`` 70x70 PatchGAN (3 layers), batch norm, dropout 0.5 in the generator, vanilla GAN loss
(``BCEWithLogitsLoss``), L1 weight 100, Adam (2e-4, betas 0.5/0.999), fp32. The same layers in the same order; only
what the reference does around the step (visdom, HTML pages, data loading) is left out, and the channel counts
follow the project's condition (``input_nc`` = condition channels) so both steps do the same work.
"""

from __future__ import annotations

import torch
from torch import nn


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 use_dropout=False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), nn.BatchNorm2d(inner_nc)
        uprelu, upnorm = nn.ReLU(True), nn.BatchNorm2d(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, use_dropout=True):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, n_layers=3):
        super().__init__()
        seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class GANLoss(nn.Module):
    """The reference's vanilla GAN loss: BCE-with-logits against a target tensor of the prediction's shape."""

    def __init__(self):
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, prediction, target_is_real):
        return self.loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))


def init_normal(net: nn.Module) -> nn.Module:
    """The reference's ``init_weights(init_type='normal', gain=0.02)``."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return net


class ReferencePix2Pix:
    """``Pix2PixModel.optimize_parameters`` on tensors ``real_A`` (condition) and ``real_B`` (target)."""

    def __init__(self, input_nc: int, output_nc: int, size_px: int, ngf: int = 64, ndf: int = 64, lambda_l1: float = 100.0):
        num_downs = {256: 8, 128: 7, 64: 6}[size_px]
        self.netG = init_normal(UnetGenerator(input_nc, output_nc, num_downs, ngf))
        self.netD = init_normal(NLayerDiscriminator(input_nc + output_nc, ndf))
        self.criterionGAN, self.criterionL1, self.lambda_l1 = GANLoss(), nn.L1Loss(), lambda_l1
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))

    @staticmethod
    def set_requires_grad(net, flag):
        for p in net.parameters():
            p.requires_grad = flag

    def optimize_parameters(self, real_A, real_B):
        fake_B = self.netG(real_A)
        self.set_requires_grad(self.netD, True)
        self.optimizer_D.zero_grad()
        loss_D_fake = self.criterionGAN(self.netD(torch.cat((real_A, fake_B), 1).detach()), False)
        loss_D_real = self.criterionGAN(self.netD(torch.cat((real_A, real_B), 1)), True)
        ((loss_D_fake + loss_D_real) * 0.5).backward()
        self.optimizer_D.step()
        self.set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad()
        loss_G_GAN = self.criterionGAN(self.netD(torch.cat((real_A, fake_B), 1)), True)
        loss_G = loss_G_GAN + self.criterionL1(fake_B, real_B) * self.lambda_l1
        loss_G.backward()
        self.optimizer_G.step()
