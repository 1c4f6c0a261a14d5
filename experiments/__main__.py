from experiments.cli import console

console()
