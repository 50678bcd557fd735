"""marlcli: a command-line experiment runner for multi-agent reinforcement learning."""

__version__ = "0.1.0"
