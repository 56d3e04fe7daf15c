"""Screens and dialogs the dashboard pushes: confirmation, scheduling, remaining recipients, details."""

from .confirm import ConfirmDialog
from .details import DetailsScreen
from .remaining import RemainingScreen
from .schedule import ScheduleDialog, ScheduleRequest

__all__ = ["ConfirmDialog", "DetailsScreen", "RemainingScreen", "ScheduleDialog", "ScheduleRequest"]
