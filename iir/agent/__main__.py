"""``python -m iir.agent``: the same as ``iir agent``."""

from iir.agent.command import agent

agent(prog_name="python -m iir.agent")
