#!/usr/bin/env python3
"""PyTorch baseline for `pixellm bench`: the same PixelLM stages at the same shapes.

Builds PixelLM's parts with random f32 weights (no checkpoint needed) and times the
stages of `crates/pixellm/src/bench.rs`, with the same names and the same contents:

  preprocess         PIL bilinear resize of a 640x480 synthetic image to longest side 448,
                     ImageNet normalisation, zero pad to 448x448, to a [1, 3, 448, 448] tensor
  vision tower       transformers CLIPVisionModel at image_size 448 (1025 positions),
                     output_hidden_states=True; by default only the blocks PixelLM needs
                     (layer -2: 23 of 24 for ViT-L), `--vision-full` runs all of them
  projectors + neck  bilinear 32->16 (= 2x2 average) of the deep features, mm_projector on
                     256 tokens, out_mm_projector on 2x1024 tokens, neck on [2, H, 32, 32]
  prefill            token embedding + image splice, then LlamaForCausalLM's decoder stack
                     (`.model`, post-norm hidden states, KV cache) on prompt + 256 positions
  decode             new_tokens steps of: lm_head on the last hidden state, argmax,
                     `.item()`, one-token forward with past_key_values (as ours: no EOS)
  pixel decoder      text_hidden_fcs on the 6*targets codebook states, 1/6 fusion, both
                     TwoWayTransformer levels (32x32 and 64x64 keys), upscalings,
                     hypernetwork matmul, 128x128 fusion (docs/model.md §10, plain torch)
  postprocess        bilinear 128->448, crop, bilinear to 480x640, per-target area, bbox
                     and sigmoid score read back as Python numbers
  end to end         the whole iteration

Every stage is timed after one warm-up iteration. CPU PyTorch is synchronous, so the
wall time of each stage is its own work; on `--device cuda` each stage ends with
`torch.cuda.synchronize()` (as ours synchronises the device at each stage's end). With
`--dtype bf16|f16` every module is built in f32 on the device and then cast (the official
code keeps a few f32 islands; this baseline runs all of it in the half type).

Usage:
  compare-pytorch.py --shape tiny|mid|7b|13b [--prompt-tokens 300] [--new-tokens 32]
                     [--targets 2] [--iters 3] [--attn sdpa|eager] [--vision-full]
                     [--device cpu|cuda] [--dtype f32|bf16|f16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import inspect
import math
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)

IMAGE_SIZE = 448
# transformers >= 5.2x renamed the KV-cache argument and output `past_key_values` -> `cache`.
CACHE_ARG = (
    "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
)
IMAGE_TOKENS = 256
IMAGE_TOKEN_INDEX = -200
DECODER_DIM = 256
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

# LLaMA and CLIP sizes of each bench shape (crates/pixellm/src/bench.rs `Shape::configs`).
CLIP_VIT_L = dict(hidden=1024, layers=24, heads=16, mlp=4096, patch=14)
SHAPES = {
    "tiny": dict(
        llm=dict(
            hidden=64,
            layers=4,
            heads=4,
            kv_heads=4,
            mlp=256,
            vocab=1008,
            rms_eps=1e-6,
            max_pos=2048,
        ),
        clip=dict(hidden=48, layers=12, heads=4, mlp=192, patch=14),
    ),
    "mid": dict(
        llm=dict(
            hidden=2048,
            layers=22,
            heads=32,
            kv_heads=4,
            mlp=5632,
            vocab=32000,
            rms_eps=1e-5,
            max_pos=2048,
        ),
        clip=CLIP_VIT_L,
    ),
    "7b": dict(
        llm=dict(
            hidden=4096,
            layers=32,
            heads=32,
            kv_heads=32,
            mlp=11008,
            vocab=32009,
            rms_eps=1e-6,
            max_pos=2048,
        ),
        clip=CLIP_VIT_L,
    ),
    "13b": dict(
        llm=dict(
            hidden=5120,
            layers=40,
            heads=40,
            kv_heads=40,
            mlp=13824,
            vocab=32008,
            rms_eps=1e-5,
            max_pos=4096,
        ),
        clip=CLIP_VIT_L,
    ),
}

STAGES = [
    "preprocess",
    "vision tower",
    "projectors + neck",
    "prefill",
    "decode",
    "pixel decoder",
    "postprocess",
    "end to end",
]


# --------------------------------------------------------------------------------------
# Image side
# --------------------------------------------------------------------------------------


def test_image() -> Image.Image:
    """The bench's deterministic 640x480 image: R = x % 256, G = y % 256, B = (x+y) % 256."""
    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def preprocess(image: Image.Image, size: int = IMAGE_SIZE):
    """docs/model.md §5.1: ResizeLongestSide (Pillow bilinear), ImageNet normalise, pad."""
    w0, h0 = image.size
    scale = size / max(h0, w0)
    h1, w1 = int(h0 * scale + 0.5), int(w0 * scale + 0.5)
    resized = np.asarray(image.resize((w1, h1), Image.BILINEAR), dtype=np.float32)
    normalised = (resized - PIXEL_MEAN) / PIXEL_STD
    padded = np.zeros((size, size, 3), dtype=np.float32)
    padded[:h1, :w1] = normalised
    pixels = torch.from_numpy(padded).permute(2, 0, 1).unsqueeze(0).contiguous()
    return pixels, (h1, w1), (h0, w0)


class LayerNorm2d(nn.Module):
    """SAM's LayerNorm over the channel dimension of NCHW maps."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def projector(d_in: int, hidden: int) -> nn.Sequential:
    """mm_projector / out_mm_projector: Linear(D -> 2H), GELU (erf), Linear(2H -> H)."""
    return nn.Sequential(nn.Linear(d_in, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))


def neck(hidden: int) -> nn.Sequential:
    """image_feature_neck: Conv1x1 (H -> 256), LN2d, Conv3x3 (256 -> 256), LN2d."""
    return nn.Sequential(
        nn.Conv2d(hidden, DECODER_DIM, 1, bias=False),
        LayerNorm2d(DECODER_DIM),
        nn.Conv2d(DECODER_DIM, DECODER_DIM, 3, padding=1, bias=False),
        LayerNorm2d(DECODER_DIM),
    )


# --------------------------------------------------------------------------------------
# Pixel decoder (docs/model.md §10), plain torch
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """SAM attention with an optional internal downsampling of the embedding dim."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        internal = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q = self._split(self.q_proj(q))
        k = self._split(self.k_proj(k))
        v = self._split(self.v_proj(v))
        attn = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = attn.softmax(-1) @ v
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, downsample: int, skip_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.ReLU(), nn.Linear(mlp, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample)
        self.skip_pe = skip_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM TwoWayTransformer: depth 2, dim 256, 8 heads, MLP 2048 ReLU, downsample 2."""

    def __init__(self, dim=DECODER_DIM, depth=2, heads=8, mlp=2048, downsample=2):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(dim, heads, mlp, downsample, skip_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image, image_pe, tokens):
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


def mlp(dims: list[int]) -> nn.Sequential:
    """SAM MLP: Linear layers with ReLU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def upscale(c_in: int, c_out: int) -> nn.Sequential:
    """ConvTranspose2d(k 2, s 2), LayerNorm2d, GELU."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 2, stride=2), LayerNorm2d(c_out), nn.GELU()
    )


def fourier_pe(gaussian: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SAM PositionEmbeddingRandom for an h x w grid -> [1, 256, h, w]."""
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    coords = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)
    a = 2 * math.pi * ((2 * coords - 1) @ gaussian)
    return torch.cat([a.sin(), a.cos()], dim=-1).permute(2, 0, 1).unsqueeze(0)


class PixelDecoder(nn.Module):
    """text_hidden_fcs + codebook fusion + MaskDecoderMultiScale (two levels) + fusion.

    Like ours, only mask token 0's hypernetwork is evaluated (multimask_output = False),
    and both Fourier position tables are computed once at build time.
    """

    def __init__(self, llm_hidden: int, grid: int, dim: int = DECODER_DIM):
        super().__init__()
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(llm_hidden, llm_hidden), nn.ReLU(), nn.Linear(llm_hidden, dim)
        )
        self.no_mask_embed = nn.Parameter(torch.randn(dim))
        self.iou_token = nn.Parameter(torch.randn(1, dim))
        self.mask_tokens = nn.Parameter(torch.randn(4, dim))
        self.level_embed = nn.Parameter(torch.randn(2, dim))
        self.transformer = nn.ModuleList(TwoWayTransformer(dim) for _ in range(2))
        self.output_upscaling = upscale(dim, dim // 8)
        self.upsample_2x = upscale(dim, dim)
        self.output_hypernetwork_0 = mlp([dim, dim, dim, dim // 8])
        self.iou_prediction_head = mlp([dim, dim, dim, 4])
        self.register_buffer("pe0", fourier_pe(torch.randn(2, dim // 2), grid, grid))
        self.register_buffer("pe1", fourier_pe(torch.randn(2, dim // 2), 2 * grid, 2 * grid))
        self.grid = grid

    def level(self, level, features, sparse, prev=None):
        n, c = sparse.shape[0], sparse.shape[-1]
        fixed = torch.cat([self.iou_token, self.mask_tokens], 0).expand(n, -1, -1)
        tokens = torch.cat([fixed, sparse], 1) + self.level_embed[level]
        if prev is None:
            src, pe = features, self.pe0
        else:
            src = self.upsample_2x(features) * (torch.sigmoid(prev.mean(1, keepdim=True)) + 1)
            pe = self.pe1
        _, _, h, w = src.shape
        src = src.expand(n, c, h, w) + self.no_mask_embed.reshape(1, c, 1, 1)
        pos = pe.expand(n, c, h, w)
        hs, keys = self.transformer[level](src, pos, tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(n, c, h, w))
        _, cu, hu, wu = upscaled.shape
        hyper = self.output_hypernetwork_0(hs[:, 1]).reshape(n, 1, cu)
        masks = (hyper @ upscaled.reshape(n, cu, hu * wu)).reshape(n, 1, hu, wu)
        iou = self.iou_prediction_head(hs[:, 0])[:, :1]
        return masks, iou

    def forward(self, seg_hidden, decoder_features):
        projected = self.text_hidden_fcs(seg_hidden)
        n = projected.shape[0] // 6
        prompts = projected.reshape(n, 2, 3, -1).sum(2) * (1.0 / 6.0)
        m0, _ = self.level(0, decoder_features[0:1], prompts[:, 0:1])
        m1, _ = self.level(1, decoder_features[1:2], prompts[:, 1:2], prev=m0)
        out = 4 * self.grid
        m0 = F.interpolate(m0, size=(out, out), mode="bilinear", align_corners=False)
        m1 = F.interpolate(m1, size=(out, out), mode="bilinear", align_corners=False)
        return (m0 + m1) * 0.5


def postprocess(low_res, resized, original, size: int = IMAGE_SIZE):
    """docs/model.md §10.5-10.6: bilinear 128 -> 448, crop, bilinear to the original size,
    then per target area, bbox and score as Python numbers (ours reads them on the host)."""
    x = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
    x = x[:, :, : resized[0], : resized[1]]
    logits = F.interpolate(x, size=original, mode="bilinear", align_corners=False)[:, 0]
    stats = []
    for m in logits:
        fg = m > 0
        area = int(fg.sum())
        score = float((torch.sigmoid(m) * fg).sum() / (area + 1e-6))
        rows, cols = fg.any(1).nonzero(), fg.any(0).nonzero()
        bbox = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1] if area else None
        stats.append((area, bbox, score))
    return logits, stats


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


class Model:
    def __init__(self, shape: str, attn: str, vision_full: bool):
        spec = SHAPES[shape]
        c, l = spec["clip"], spec["llm"]
        self.clip_layers = c["layers"]
        self.deep_index = c["layers"] - 1  # mm_vision_select_layer -2
        self.shallow_index = c["layers"] - 10  # layer -11
        self.grid = IMAGE_SIZE // c["patch"]
        self.hidden = l["hidden"]
        self.vocab = l["vocab"]
        self.max_pos = l["max_pos"]
        vision_config = CLIPVisionConfig(
            hidden_size=c["hidden"],
            intermediate_size=c["mlp"],
            num_hidden_layers=c["layers"] if vision_full else self.deep_index,
            num_attention_heads=c["heads"],
            image_size=IMAGE_SIZE,
            patch_size=c["patch"],
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            attn_implementation=attn,
        )
        self.vision = CLIPVisionModel(vision_config).eval()
        table = next(m for n, m in self.vision.named_modules() if n.endswith("position_embedding"))
        assert table.num_embeddings == self.grid**2 + 1, "CLIP position table size"

        self.mm_projector = projector(c["hidden"], l["hidden"]).eval()
        self.out_mm_projector = projector(c["hidden"], l["hidden"]).eval()
        self.neck = neck(l["hidden"]).eval()
        llm_config = LlamaConfig(
            hidden_size=l["hidden"],
            intermediate_size=l["mlp"],
            num_hidden_layers=l["layers"],
            num_attention_heads=l["heads"],
            num_key_value_heads=l["kv_heads"],
            rms_norm_eps=l["rms_eps"],
            rope_theta=10000.0,
            vocab_size=l["vocab"],
            max_position_embeddings=l["max_pos"],
            tie_word_embeddings=False,
            attn_implementation=attn,
        )
        self.llm = LlamaForCausalLM(llm_config).eval()
        self.decoder = PixelDecoder(l["hidden"], self.grid).eval()
        self.attn = self.llm.config._attn_implementation

    def modules(self) -> list[nn.Module]:
        mods = [self.vision, self.mm_projector, self.out_mm_projector, self.neck]
        return mods + [self.llm, self.decoder]

    def parameters(self) -> int:
        return sum(p.numel() for m in self.modules() for p in m.parameters())

    def cast(self, dtype: torch.dtype) -> None:
        for m in self.modules():
            m.to(dtype)

    def run_vision(self, pixels):
        out = self.vision(pixel_values=pixels, output_hidden_states=True)
        hs = out.hidden_states
        return hs[self.deep_index], hs[self.shallow_index]

    def project_image(self, deep, shallow):
        g, lg = self.grid, self.grid // 2
        deep, shallow = deep[:, 1:], shallow[:, 1:]
        d = deep.shape[-1]
        grid = deep.transpose(1, 2).reshape(1, d, g, g)
        pooled = F.interpolate(grid, size=(lg, lg), mode="bilinear", align_corners=False)
        llm_tokens = self.mm_projector(pooled.reshape(1, d, lg * lg).transpose(1, 2))
        mask_features = self.out_mm_projector(torch.cat([deep, shallow], 0))
        maps = mask_features.transpose(1, 2).reshape(2, self.hidden, g, g)
        return llm_tokens, self.neck(maps)

    def prefill(self, ids, llm_tokens):
        p = ids.index(IMAGE_TOKEN_INDEX)
        embed = self.llm.model.embed_tokens
        parts = []
        if p > 0:
            parts.append(embed(torch.tensor([ids[:p]])))
        parts.append(llm_tokens)
        if p + 1 < len(ids):
            parts.append(embed(torch.tensor([ids[p + 1 :]])))
        embeds = torch.cat(parts, 1)
        e = embeds.shape[1]
        out = self.llm.model(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, e, dtype=torch.long),
            use_cache=True,
        )
        return out.last_hidden_state[:, -1], getattr(out, CACHE_ARG), e

    def decode(self, last, cache, length, new_tokens):
        generated = []
        for _ in range(new_tokens):
            token = int(self.llm.lm_head(last).argmax(-1).item())
            generated.append(token)
            length += 1
            out = self.llm.model(
                input_ids=torch.tensor([[token]]),
                attention_mask=torch.ones(1, length, dtype=torch.long),
                use_cache=True,
                **{CACHE_ARG: cache},
            )
            cache, last = getattr(out, CACHE_ARG), out.last_hidden_state[:, -1]
        return generated


# --------------------------------------------------------------------------------------
# Bench
# --------------------------------------------------------------------------------------


def prompt_ids(prompt_tokens: int, vocab: int) -> list[int]:
    """BOS, pseudo-random text ids, the image placeholder at 35: bench.rs's layout."""
    ids = [3 + (i * 7919) % (vocab - 3) for i in range(prompt_tokens)]
    ids[0] = 1
    ids.insert(min(prompt_tokens, 35), IMAGE_TOKEN_INDEX)
    return ids


def summary(samples: list[float]) -> dict:
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "samples_ms": samples,
    }


class CpuShare:
    """Share of the machine's CPU time that other processes used between two reads
    (from /proc/stat minus this process's own user + system time). Linux only."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        own = resource.getrusage(resource.RUSAGE_SELF)
        ticks = os.sysconf("SC_CLK_TCK")
        return busy / ticks, own.ru_utime + own.ru_stime, time.perf_counter()

    def others(self) -> float | None:
        end = self._read()
        if end is None or self.start is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def peak_host_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def run(args) -> dict:
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cuda = device.type == "cuda"
    # Modules, ids and masks are created where they run (no host copies of the weights).
    torch.set_default_device(device)

    log(f"building the {args.shape} model with random weights ({args.dtype}, {device})…")
    t = time.perf_counter()
    model = Model(args.shape, args.attn, args.vision_full)
    if dtype != torch.float32:
        model.cast(dtype)
    if cuda:
        torch.cuda.synchronize()
    build_ms = (time.perf_counter() - t) * 1e3
    log(f"  {model.parameters() / 1e6:.1f} M parameters in {build_ms / 1e3:.1f} s")

    if args.prompt_tokens + IMAGE_TOKENS + args.new_tokens > model.max_pos:
        sys.exit(
            f"{args.prompt_tokens} prompt tokens + {IMAGE_TOKENS} image tokens + "
            f"{args.new_tokens} new tokens exceed the context of {model.max_pos}"
        )
    image = test_image()
    ids = prompt_ids(args.prompt_tokens, model.vocab)
    seg_hidden = (torch.rand(6 * args.targets, model.hidden) * 2 - 1).to(dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    samples: list[list[float]] = [[] for _ in STAGES]
    cpu_share = None
    with torch.inference_mode():
        for it in range(args.iters + 1):
            log("warm-up iteration…" if it == 0 else f"iteration {it}/{args.iters}…")
            times: list[float] = []
            start = lap = time.perf_counter()

            def stop():
                nonlocal lap
                if cuda:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                times.append((now - lap) * 1e3)
                lap = now

            pixels, resized, original = preprocess(image)
            pixels = pixels.to(device, dtype)
            stop()
            deep, shallow = model.run_vision(pixels)
            stop()
            llm_tokens, decoder_features = model.project_image(deep, shallow)
            stop()
            last, cache, length = model.prefill(ids, llm_tokens)
            stop()
            generated = model.decode(last, cache, length, args.new_tokens)
            assert len(generated) == args.new_tokens
            stop()
            low_res = model.decoder(seg_hidden, decoder_features)
            stop()
            _, stats = postprocess(low_res, resized, original)
            assert len(stats) == args.targets
            stop()
            times.append((time.perf_counter() - start) * 1e3)
            del cache
            if it == 0:
                cpu_share = CpuShare()  # measured over the timed iterations
            else:
                for s, t in zip(samples, times):
                    s.append(t)

    stages = [{"name": n, **summary(s)} for n, s in zip(STAGES, samples)]
    decode = next(s for s in stages if s["name"] == "decode")
    if cuda:
        name = f"PyTorch CUDA ({torch.cuda.get_device_name(device)})"
    else:
        name = f"PyTorch CPU ({platform.processor() or platform.machine()})"
    return {
        "shape": args.shape,
        "device": name,
        "dtype": {"f32": "F32", "bf16": "BF16", "f16": "F16"}[args.dtype],
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "targets": args.targets,
        "iters": args.iters,
        "stages": stages,
        "decode_tokens_per_s": args.new_tokens / (decode["median_ms"] / 1e3),
        "build_ms": build_ms,
        "peak_host_bytes": peak_host_bytes(),
        "peak_device_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.attn,
        "vision_layers_run": model.vision.config.num_hidden_layers,
        "vision_layers_total": model.clip_layers,
        "python": platform.python_version(),
        # Share of all cores' time that other processes used during the timed iterations.
        "other_processes_cpu_share": cpu_share.others(),
    }


def table(report: dict) -> str:
    r = report
    lines = [
        f"PyTorch {r['torch']} (transformers {r['transformers']}, {r['threads']} threads, "
        f"attention {r['attn_implementation']}, CLIP blocks run "
        f"{r['vision_layers_run']}/{r['vision_layers_total']}): shape {r['shape']} | "
        f"{r['dtype']} | prompt {r['prompt_tokens']} + 256 image tokens, "
        f"{r['new_tokens']} new tokens, {r['targets']} targets, {r['iters']} iterations",
        f"{'stage':<26} {'median ms':>11} {'min ms':>11} {'max ms':>11}",
    ]
    for s in r["stages"]:
        lines.append(
            f"{s['name']:<26} {s['median_ms']:>11.2f} {s['min_ms']:>11.2f} {s['max_ms']:>11.2f}"
        )
    tps = r["decode_tokens_per_s"]
    lines.append(f"decode: {tps:.2f} tokens/s ({1e3 / max(tps, 1e-9):.1f} ms/token)")
    lines.append(f"model build (random weights): {r['build_ms']:.0f} ms")
    lines.append(f"peak host memory: {r['peak_host_bytes'] / 1e9:.2f} GB")
    others = r["other_processes_cpu_share"]
    if others is not None:
        lines.append(f"CPU used by other processes during the timed iterations: {others:.0%}")
        if others > 0.05:
            lines.append("warning: other processes were using the CPU; timings are inflated")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument(
        "--attn",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="attention implementation of CLIP and LLaMA (default sdpa)",
    )
    parser.add_argument(
        "--vision-full",
        action="store_true",
        help="run every CLIP block (default: only up to layer -2, as PixelLM and ours)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="f32")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args()
    args.iters = max(args.iters, 1)

    report = run(args)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
