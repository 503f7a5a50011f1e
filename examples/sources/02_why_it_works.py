# Source of examples/02_why_it_works.ipynb (python scripts/build_notebooks.py builds it).

# %% [markdown]
# # 2. Why residual networks train: gradients, signal, loss landscapes and lesions
#
# Notebook 1 showed *that* deep plain nets train worse than their residual twins. This one looks
# inside the twins for *why*, with the measurements of four papers:
#
# | question | paper | what reslab measures |
# |---|---|---|
# | does the gradient reach the early blocks? | He et al. 2016, [arXiv:1603.05027](https://arxiv.org/abs/1603.05027) §3 | ‖∂L/∂x_l‖ at every block |
# | what does the forward signal do with depth? | Brock, De & Smith 2021, [arXiv:2101.08692](https://arxiv.org/abs/2101.08692) | the variance of each block's output |
# | what does the loss look like around the trained weights? | Li et al. 2018, [arXiv:1712.09913](https://arxiv.org/abs/1712.09913) | filter-normalised loss surfaces |
# | is a ResNet one deep path, or many shallow ones? | Veit, Wilber & Belongie 2016, [arXiv:1605.06431](https://arxiv.org/abs/1605.06431) | the test error with blocks deleted |
#
# (A fifth, Balduzzi et al. 2017, [arXiv:1702.08591](https://arxiv.org/abs/1702.08591), shows that
# plain nets' gradients *shatter* into noise with depth: `reslab shattering`.)
#
# Each measurement is a plain function of a model and a batch in `reslab.measure`, and each
# study writes its numbers to a `results.json` that `reslab.run_study` also returns as a
# dictionary: everything below is plain Python lists, to plot any way you like. Sizes are shrunk
# to run on a laptop CPU in about a minute: the bundled 8×8 digits, depth 20, half the paper's
# width.

# %%
import reslab  # first: it sets OpenMP's passive waiting, which must happen before torch loads

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display

from reslab.measure.probes import gradient_flow
from reslab.measure.signal import signal_propagation

_ = torch.manual_seed(0)
digits = reslab.load_dataset("digits")
# 64 training digits, normalised as the trainer does (one channel: one mean, one std)
x = (digits.train_images[:64].float() / 255 - digits.mean[0]) / digits.std[0]
y = digits.train_labels[:64]
NAMES = {"plain": "plain20", "residual": "resnet20"}
STYLE = {"plain": "o--", "residual": "s-"}


def fresh(family):
    """A net at initialisation: 20 layers, half width, 1-channel input."""
    return reslab.create_model(NAMES[family], in_channels=1, width=0.5)


# %% [markdown]
# ## 2.1 Gradient flow at initialisation (He et al. 2016)
#
# With identity shortcuts, the gradient at block *l* is
# ∂L/∂x_l = ∂L/∂x_L · (1 + ∂/∂x_l Σ F(x_i)): the "1" hands the last block's gradient to every
# earlier block directly. A plain net multiplies the blocks' Jacobians instead, so whatever each
# block does to the gradient compounds with depth. `gradient_flow` backpropagates one batch and
# returns ‖∂L/∂x_l‖ at every block input (in the model's current mode: train mode, as training
# sees it).
#
# With batch normalisation the compounding is not a vanishing gradient: each BN divides by the
# scale of its input, and in the plain net the gradient *grows* toward the input block after
# block, a growth that compounds with depth (over plain-56's 27 blocks, some thousands of times:
# `reslab gradients`). The residual net's grows less: compare the ratios printed below.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for family in NAMES:
    flow = gradient_flow(fresh(family), x, y)
    grads = flow.input_grad_norms
    ax.semilogy(grads, STYLE[family], label=NAMES[family])
    print(f"{NAMES[family]}: the first block's gradient is {grads[0] / grads[-1]:.1f}x the last's")
ax.set(xlabel="block (input → output)", ylabel="‖∂L/∂x_l‖", title="at initialisation")
ax.legend()
plt.show()

# %% [markdown]
# ## 2.2 The signal through depth (Brock et al. 2021)
#
# Per block, the variance of its output averaged over channels. In a BN-ReLU residual net it
# *grows* block after block through a stage — each block adds a normalised branch to what the
# shortcut carries, so later blocks' branches matter less and less relative to the identity —
# and falls back where the shape changes. In the plain twin every block's BN rebuilds the signal
# from scratch and the variance stays flat.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for family in NAMES:
    signal = signal_propagation(fresh(family), x)
    ax.plot(signal.variances, STYLE[family], label=NAMES[family])
ax.set(xlabel="block", ylabel="average channel variance", title="at initialisation")
ax.legend()
plt.show()

# %% [markdown]
# ## 2.3 Train the twins, and their loss landscapes (Li et al. 2018)
#
# Around the trained weights θ, plot the training loss L(θ + α·d₁ + β·d₂) along two random
# directions, each filter of a direction scaled to the norm of the same filter of θ so that
# nets can be compared. Li et al. found deep plain nets sit in sharp, chaotic surfaces and their
# residual twins in wide, nearly convex basins.
#
# The `landscape` study (`reslab landscape` on the command line) trains the twins — six epochs,
# enough for both to learn, which the comparisons need — then scans each: here a 9×9 grid over
# 64 training images. It prints one line per run, then its verdict.

# %%
landscape = reslab.run_study(
    reslab.StudyConfig(
        experiment="landscape",
        depths=(20,),
        seeds=(0,),
        epochs=6,
        width=0.5,
        jobs=1,  # small nets: train in this process (worker processes pay off for bigger ones)
        out="runs/landscape",
        options={"grid": 9, "curve": 11, "images": 64},
    )
)

# %% [markdown]
# `landscape["landscape"]["nets"]` holds each net's grid and losses (and `rise`, how far the loss
# climbs on average on the dashed circle of radius 0.5 around θ):

# %%
nets = landscape["landscape"]["nets"]
levels = np.linspace(0, 6, 13)  # the same contour levels for both nets, in nats
fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 4))
for ax, net in zip(np.atleast_1d(axes), nets):
    grid = np.array(net["grid"])
    contours = ax.contour(grid, grid, np.array(net["loss"]), levels=levels)
    ax.clabel(contours, fontsize=7)
    ax.add_patch(plt.Circle((0, 0), net["ring_radius"], fill=False, ls="--", color="grey"))
    ax.plot(0, 0, "k+", ms=12)
    ax.set(title=f"{net['label']}: rise {net['rise']:.2f} nats at r = {net['ring_radius']}",
           xlabel="β", ylabel="α", aspect="equal")
plt.show()

# %% [markdown]
# Read the contours as a map: widely spaced rings mean a wide basin, crowded ones a sharp
# surface. The plain net's loss climbs faster away from its trained weights; at depth 56 the
# gap is far larger (`reslab landscape`'s defaults: 34.8 nats against 0.56 on digits).

# %% [markdown]
# ## 2.4 Gradient flow after training
#
# Every run of a study is an ordinary run folder; its weights load back with
# `reslab.load_model`, and any measurement applies to them.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for family, name in NAMES.items():
    trained = reslab.load_model(f"runs/landscape/runs/{name}-s0/checkpoints/last.safetensors")
    flow = gradient_flow(trained.train(), x, y)
    ax.semilogy(flow.input_grad_norms, STYLE[family], label=f"{name}, trained")
ax.set(xlabel="block (input → output)", ylabel="‖∂L/∂x_l‖", title="after training")
ax.legend()
plt.show()

# %% [markdown]
# ## 2.5 Lesions: deleting blocks at test time (Veit et al. 2016)
#
# Delete one block of a *trained* net, keeping its shortcut: a residual block becomes the
# identity path around it; a plain block can only be replaced by the identity where the shape
# allows. Veit et al. found a ResNet barely notices (except at the blocks that change the shape),
# while a plain net falls to chance: a ResNet behaves like an ensemble of many paths of different
# lengths, not like one deep path. The `lesion` study takes the twins trained above with
# `from_dir` (`--from` on the command line) instead of training new ones.

# %%
lesion = reslab.run_study(
    reslab.StudyConfig(
        experiment="lesion",
        depths=(20,),
        seeds=(0,),
        jobs=1,
        out="runs/lesion",
        options={"from_dir": "runs/landscape", "draws": 2, "ks": (1, 2, 4)},
    )
)

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for net in lesion["lesion"]["nets"]:
    errors = [np.nan if e is None else e for e in net["deleted_error"]]
    line = ax.plot(errors, STYLE[net["family"]], label=f"{net['label']}, one block deleted")
    ax.axhline(net["intact_error"], color=line[0].get_color(), lw=0.8, label=f"{net['label']} intact")
ax.axhline(lesion["chance_error"], color="grey", ls=":", label="chance")
ax.set(xlabel="deleted block", ylabel="test error (%)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The studies draw their own figures too, from the same numbers; they lie in
# `runs/<study>/figures/` beside each study's self-contained `report.html`:

# %%
display(Image(filename="runs/lesion/figures/lesion_vs_k.png", width=600))

# %% [markdown]
# ## What the studies concluded
#
# Each verdict is computed from the numbers above by one rule (a difference counts only beyond a
# tolerance and twice the seed noise); with one seed the noise is unknown and the verdicts say so.

# %%
for name, results in (("landscape", landscape), ("lesion", lesion)):
    print(f"{name}: {results['verdict']['text']}\n")

# %% [markdown]
# ## Try next
#
# * More seeds (`seeds=(0, 1)`), deeper nets (`depths=(20, 56)` for the landscape) and the
#   full-size nets (`width=1.0`): the command-line defaults of `reslab landscape` and
#   `reslab lesion`.
# * `reslab degradation` and `reslab gradients --probe-steps 0,10,30` record the gradient flow and
#   the signal in their `results["probes"]`; `reslab shattering` measures Balduzzi et al.'s
#   shattered gradients (it trains nothing).
# * `options={"weights": "resnet56.th", "model": "resnet56"}` lesions a downloaded CIFAR
#   checkpoint instead of your own nets.
