"""The model emulator: a server speaking the hosted models' contract with synthetic answers
(not a clinical model), its command, and the helpers that start it.
"""

from listener.emulator.app import EmulatorStats, create_app
from listener.emulator.server import emulator_if_needed, run_emulator, start_emulator

__all__ = ["EmulatorStats", "create_app", "emulator_if_needed", "run_emulator", "start_emulator"]
