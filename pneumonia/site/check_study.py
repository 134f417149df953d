"""`pneumonia site check-study`: the shift test's false alarms and power (pneumonia.site.check)."""

from pneumonia.site.check import add_study_arguments as add_arguments
from pneumonia.site.check import study_command as command

__all__ = ["add_arguments", "command"]
