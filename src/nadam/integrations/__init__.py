"""Other faces of the same engine: `torch_optim` (a `torch.optim.Optimizer`).

Each module imports its framework; none is imported by `import nadam`.
"""
