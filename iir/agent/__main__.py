"""``python -m iir.agent``: the same as ``iir agent``."""

from iir.cmd.agent import agent

agent(prog_name="python -m iir.agent")
