"""Networks shared by every algorithm: per-agent MLPs with parameter sharing, normalizers."""

from marlcli.nets.mlp import AgentMLP, GroupLinear, agent_groups, with_agent_id
from marlcli.nets.norm import RunningNorm

__all__ = ["AgentMLP", "GroupLinear", "RunningNorm", "agent_groups", "with_agent_id"]
