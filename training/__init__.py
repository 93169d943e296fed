"""Offline jobs behind ``logad-train``: parse historical logs, build sessions, fit, calibrate, evaluate, bundle."""
