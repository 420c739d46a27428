"""Other faces of the same engine: `torch_optim` (a `torch.optim.Optimizer`), `optax` (an
`optax.GradientTransformation`, on the traced twin of the step, `kernels.xla`).

Each module imports its framework; none is imported by `import nadam`.
"""
