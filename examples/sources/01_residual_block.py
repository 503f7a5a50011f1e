# Source of examples/01_residual_block.ipynb (python scripts/build_notebooks.py builds it).

# %% [markdown]
# # 1. The residual block: from three numbers to the degradation curve
#
# A deep network is asked to compute some mapping `H(x)`. A **residual block** does not learn
# `H` outright: its layers learn only the correction `F(x) = H(x) − x`, and a *shortcut* adds
# the input back, `y = x + F(x)` (He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image
# Recognition", [arXiv:1512.03385](https://arxiv.org/abs/1512.03385), §3.1). If the identity is
# already close to right, the layers only have to push `F` towards zero — far easier than
# rebuilding the identity through a stack of nonlinear layers.
#
# This notebook goes from one block with three numbers to trained ResNets and their *plain
# twins* (the same layers without the shortcuts), and ends with the **degradation problem**:
# deeper plain nets fit their own *training* set worse. It runs top to bottom on a laptop CPU in
# well under a minute.

# %%
import reslab  # first: it sets OpenMP's passive waiting, which must happen before torch loads

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display
from torch import nn

from reslab.explain import describe, explain_figure, worked_example

# %% [markdown]
# ## 1.1 The worked example
#
# Take the input `x = [2.0, 1.5, 0.8]` and ask the block for `H(x) = [2.3, 1.4, 1.0]`. The
# correction the layers must learn is `F(x) = H(x) − x = [0.3, −0.1, 0.2]`: small numbers, a
# small nudge of the identity.
#
# `worked_example` builds a real `reslab.Residual` whose branch is one linear layer that
# *starts at zero* (so the block starts as the identity), fits that branch by gradient descent,
# and reports what the module computes. Nothing below is typed in: it is the module's output.
# The second example changes the shape (3 numbers in, 2 out), so the shortcut can no longer be
# the identity; it becomes a projection `W_s` and `y = W_s x + F(x)`.

# %%
same = worked_example(x=(2.0, 1.5, 0.8), target=(2.3, 1.4, 1.0))
changed = worked_example(
    x=(2.0, 1.5, 0.8), target=(1.9, 1.0), projection=((0.5, 0.5, 0.0), (0.0, 0.5, 0.5))
)
print(describe(same, changed))

# %% [markdown]
# The same example as a diagram (`reslab explain --figure residual_block.png` draws it from the
# command line):

# %%
path = explain_figure(same.x, same.target, same.correction, same.y, "residual_block.png")
display(Image(filename=str(path)))

# %% [markdown]
# ## 1.2 Your own block
#
# `reslab.Residual(branch, shortcut=None)` is the whole idea in one line of `forward`:
# `out = branch(x) + shortcut(x)`, the shortcut being the identity unless you give one.
# Its plain twin (`plain=True`) drops that addition. Build a two-layer branch whose last layer
# starts at zero: the residual block is then exactly the identity, while the plain stack
# outputs zeros — a plain net has to *learn* the identity that a residual net gets for free.

# %%
branch = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))
nn.init.zeros_(branch[2].weight)
nn.init.zeros_(branch[2].bias)

x = torch.tensor([[2.0, 1.5, 0.8]])
residual = reslab.Residual(branch)
plain = reslab.Residual(branch, plain=True)  # the same layers, no shortcut
print("input         ", x)
print("residual block", residual(x).detach())
print("plain twin    ", plain(x).detach())

# %% [markdown]
# ## 1.3 From a block to a network
#
# `reslab.create_model` builds every ResNet of the papers, and each has a plain twin under the
# matching name. The CIFAR ResNets of He et al. 2015 §4.2 are three stages of `n` basic blocks
# (two 3×3 convolutions each), so depth `6n + 2`; the twin has *exactly* the same parameters.

# %%
for depth in (20, 56):
    res = reslab.create_model(f"resnet{depth}")
    twin = reslab.create_model(f"plain{depth}")
    print(f"resnet{depth}: {reslab.count_params(res):,} parameters; "
          f"plain{depth}: {reslab.count_params(twin):,}")

print(reslab.create_model("resnet20").layer1[0])  # one block: its branch and its shortcut

# %% [markdown]
# ## 1.4 The degradation problem
#
# He et al. 2015 (§4.1, Fig. 1 and 6) found that stacking more layers on a plain network makes
# its **training** error go *up* — not overfitting (the training set itself is fitted worse) but
# an optimisation failure — while the residual twin of the same depth keeps improving.
#
# `reslab.run_study` runs the study that `reslab degradation` runs on the command line. Here it
# is shrunk to notebook size: the 8×8 handwritten digits bundled with reslab (offline), nets a
# quarter of the paper's width, depths 8, 14 and 20, four epochs, one seed. Each run prints one
# line when it finishes, then the table and the verdict; every run is an ordinary run folder
# under `runs/degradation/runs/`.

# %%
config = reslab.StudyConfig(
    experiment="degradation",
    probe_batch=64,  # images the probes measure (notebook 2 reads them)
    depths=(8, 14, 20),
    seeds=(0,),
    epochs=4,
    width=0.25,
    jobs=1,  # nets this small train fastest in this process; worker processes pay off for bigger ones
    out="runs/degradation",
)
results = reslab.run_study(config)

# %% [markdown]
# `results` is the study's `results.json` as a dictionary (the same file lies in
# `runs/degradation/`; its schema is in the README). `summary` has one row per net, `runs` one
# per training run with its curves. The **degradation curve** is the final training error
# against depth, one line per family:

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
for family, style in (("plain", "o--"), ("residual", "s-")):
    rows = sorted((r for r in results["summary"] if r["family"] == family), key=lambda r: r["depth"])
    left.plot([r["depth"] for r in rows], [r["clean_train_error_mean"] for r in rows], style,
              label=family)
left.set(xlabel="depth", ylabel="final training error (%)", title="degradation curve")
left.legend()

deepest = max(config.depths)
for run in results["runs"]:
    if run["depth"] == deepest:
        curves = run["curves"]
        right.plot(curves["epoch"], curves["clean_train_error"], label=run["name"])
right.set(xlabel="epoch", ylabel="training error (%)", title=f"depth {deepest}, as it trains")
right.legend()
plt.show()

# %% [markdown]
# The verdict is computed from these numbers by the rule every reslab study uses: a difference
# counts only beyond a tolerance and beyond twice the seed noise (with one seed the noise is
# unknown, and the verdict says so).

# %%
print(results["verdict"]["text"])

# %% [markdown]
# ## 1.5 A trained ResNet and its plain twin, side by side
#
# Every run folder holds its weights (`checkpoints/last.safetensors`, the model config and the
# input normalisation in the header), so the trained nets load back with `reslab.load_model`.
# Here both 20-layer nets classify the first test digits.

# %%
digits = reslab.load_dataset("digits")
mean = torch.tensor(digits.mean).view(1, -1, 1, 1)  # the statistics the nets were trained with
std = torch.tensor(digits.std).view(1, -1, 1, 1)
images, labels = digits.test_images[:12], digits.test_labels[:12]
for name in (f"resnet{deepest}-s0", f"plain{deepest}-s0"):
    net = reslab.load_model(f"runs/degradation/runs/{name}/checkpoints/last.safetensors").eval()
    with torch.no_grad():
        guess = net((images.float() / 255 - mean) / std).argmax(1)
    print(f"{name:>12}: predicts {guess.tolist()}")
print(f"{'labels':>12}:          {labels.tolist()}")

# %% [markdown]
# ## Try next
#
# * `seeds=(0, 1)` measures the seed noise. `reslab degradation`'s defaults — depths 20, 32, 56
#   at full width (`width=1.0`), two seeds, ten epochs — take one to two minutes on two cores.
# * With a much longer budget the deep plain net on this small data set eventually catches up —
#   the paper's point is that at *equal* budget it trains worse.
# * The real thing: `dataset="cifar10", recipe="paper-cifar"` (He et al. 2015 §4.2), on a GPU.
# * `runs/degradation/report.html` is the study's self-contained report, with the gradient flow
#   and the layer responses; notebook 2 reads those measurements from Python.
