# Source of examples/03_your_own_loop.ipynb (python scripts/build_notebooks.py builds it).

# %% [markdown]
# # 3. reslab's models in your own code
#
# reslab's trainer and studies are one way to use its nets; this notebook is the other: the
# models are ordinary `torch.nn.Module`s, built by name the way [timm](https://github.com/huggingface/pytorch-image-models)
# builds them, that you train in your own loop, take feature maps from, give a new head, and
# export. Every residual net has its plain twin (He et al. 2015,
# [arXiv:1512.03385](https://arxiv.org/abs/1512.03385)), so any experiment you write can be run
# with and without shortcuts by changing one name. It runs on a laptop CPU in well under a
# minute.

# %%
import reslab  # first: it sets OpenMP's passive waiting, which must happen before torch loads

import torch
import torch.nn.functional as F

_ = torch.manual_seed(0)  # the same nets and batches on every run

# %% [markdown]
# ## 3.1 Build a net by name
#
# `reslab.create_model(name, **options)` builds any registered net (`reslab.list_models()`);
# every net takes `num_classes`, `in_channels`, `width` (a channel multiplier), `shortcut`
# (`A`, `B`, `C`), `plain`, `zero_init_residual`, `preact` and more. Here a 14-layer CIFAR-style
# ResNet at half width, for the 1-channel 8×8 digits bundled with reslab.

# %%
print(len(reslab.list_models()), "names, e.g.", ", ".join(reslab.list_models()[:8]), "...")
net = reslab.create_model("resnet14", num_classes=10, in_channels=1, width=0.5)
twin = reslab.create_model("plain14", num_classes=10, in_channels=1, width=0.5)
print(f"resnet14: {reslab.count_params(net):,} parameters, plain14: {reslab.count_params(twin):,}")

# %% [markdown]
# ## 3.2 Your own training loop
#
# `reslab.load_dataset("digits")` gives the train and test splits as uint8 `N×C×H×W` tensors,
# with the per-channel mean and standard deviation of the training split. The rest is plain
# PyTorch: normalise, shuffle, SGD with momentum, a cosine schedule.

# %%
digits = reslab.load_dataset("digits")
mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
std = torch.tensor(digits.std).view(1, -1, 1, 1)


def prepare(images):
    return (images.float() / 255 - mean) / std


x_train, y_train = prepare(digits.train_images), digits.train_labels
x_test, y_test = prepare(digits.test_images), digits.test_labels


def test_error(model):
    model.eval()
    with torch.no_grad():
        return 100.0 * (model(x_test).argmax(1) != y_test).float().mean().item()


def train(model, epochs=4, batch_size=128, lr=0.1, params=None):
    params = list(model.parameters()) if params is None else params
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * -(-len(y_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test error {test_error(model):.1f} %")


for name, model in (("resnet14", net), ("plain14", twin)):
    print(name)
    train(model)

# %% [markdown]
# The same run through reslab's trainer is one call, `reslab.fit(reslab.TrainConfig.resolve(
# model="resnet14", dataset="digits", width=0.5, epochs=4, out="runs/r14"))`: it adds a resumable
# run folder, metrics, checkpoints and the dataset's recipe (notebook 1 runs whole studies of
# such runs).
#
# ## 3.3 Feature maps
#
# In timm's convention, `create_model(..., features_only=True)` is the net without its head,
# returning one feature map per stage (index 0 is the stem's output); `feature_info` says each
# map's channels and reduction (its stride relative to the input). Its module names are the full
# net's, so the trained weights load into it directly (less the classifier `fc`).

# %%
backbone = reslab.create_model(
    "resnet14", num_classes=10, in_channels=1, width=0.5, features_only=True
)
backbone.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
backbone.eval()
with torch.no_grad():
    maps = backbone(x_test[:4])
for info, fmap in zip(backbone.feature_info, maps):
    print(f"{info['module']:>8}: {tuple(fmap.shape)}  (reduction {info['reduction']})")

# The full net splits as timm's nets do: `forward_features` gives the last map, before pooling
# and the classifier; `forward_head(..., pre_logits=True)` pools it into the feature vector the
# classifier reads (`net.num_features` of them); `num_classes=0` builds the net without a head.
with torch.no_grad():
    final = net.forward_features(x_test[:4])
    pooled = net.forward_head(final, pre_logits=True)
print("forward_features:", tuple(final.shape), "equal to the last map:", torch.equal(final, maps[-1]))
print("pre-logits:", tuple(pooled.shape), "num_features:", net.num_features)
headless = reslab.create_model("resnet14", num_classes=0, in_channels=1, width=0.5)
print("num_classes=0 returns the pooled features:", tuple(headless(x_test[:4]).shape))

# %% [markdown]
# ## 3.4 A new head
#
# Transfer the trained net to a new task — is the digit even or odd? — by swapping its
# classifier for a fresh 2-way one (`reset_classifier(2)`, as in timm) and training only that
# (a *linear probe*, `get_classifier()`'s parameters): the features learned for ten classes
# already separate the two.

# %%
probe = reslab.create_model("resnet14", num_classes=10, in_channels=1, width=0.5)
probe.load_state_dict(net.state_dict())
probe.reset_classifier(2)  # the new head
for p in probe.parameters():
    p.requires_grad_(False)
for p in probe.get_classifier().parameters():
    p.requires_grad_(True)

y_train_10, y_test_10 = y_train, y_test
y_train, y_test = y_train_10 % 2, y_test_10 % 2  # 0: even, 1: odd
train(probe, epochs=3, lr=0.05, params=list(probe.get_classifier().parameters()))
y_train, y_test = y_train_10, y_test_10

# %% [markdown]
# ## 3.5 Export
#
# The nets are plain modules, so the usual tools apply: `torch.export` gives a graph that
# runs without reslab (and feeds ExecuTorch, AOTInductor, ONNX's dynamo exporter), and
# `torch.jit.script` (or `trace`) a TorchScript module you can save and load in C++
# (`reslab export WEIGHTS --out net.onnx` writes ONNX from the command line, checked first). `reslab.save_weights`
# writes safetensors with the model's config in the header, so `reslab.load_model` rebuilds it.

# %%
net.eval()
example = x_test[:8]
with torch.no_grad():
    expected = net(example)

exported = torch.export.export(net, (example,))
print("torch.export:", torch.allclose(exported.module()(example), expected, atol=1e-5))

scripted = torch.jit.script(net)
scripted.save("resnet14_digits.pt")
loaded = torch.jit.load("resnet14_digits.pt")
print("torch.jit.script:", torch.allclose(loaded(example), expected, atol=1e-5))

reslab.save_weights(net, "resnet14_digits.safetensors")
again = reslab.load_model("resnet14_digits.safetensors").eval()
with torch.no_grad():
    print("save_weights / load_model:", torch.equal(again(example), expected))

# %% [markdown]
# ## Try next
#
# * Swap `"resnet14"` for `"plain14"` in 3.4: does the plain net's representation transfer as
#   well?
# * `create_model("resnet20", shortcut="B", zero_init_residual=True)`, `preact=True`, or the
#   trainability options (`init="fixup", norm="none"`) in your own loop.
# * `net.forward_intermediates(x, indices=[-2, -1])` returns the final output and chosen maps
#   in one pass.
