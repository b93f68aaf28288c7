"""A local flight-status "API" for the tool-call example: `llmlab chat CKPT --tool examples/flights.py:flight_status`.

The table stands in for a real service; the function is what a tool looks like to llmlab: typed
parameters (they become the JSON schema the model's call must satisfy) and a docstring (the description).
"""

from __future__ import annotations

from typing import Literal

FLIGHTS = {
    "BA117": {"from": "LHR", "to": "JFK", "departs": "08:25", "status": "on time", "gate": "A10"},
    "LH400": {"from": "FRA", "to": "JFK", "departs": "10:05", "status": "delayed", "delay_minutes": 45},
    "AF006": {"from": "CDG", "to": "JFK", "departs": "11:30", "status": "cancelled"},
    "UA901": {"from": "SFO", "to": "LHR", "departs": "16:40", "status": "boarding", "gate": "G92"},
}


def flight_status(flight: str, day: Literal["today", "tomorrow"] = "today") -> dict:
    """Status of a flight by its number (e.g. BA117): departure time, status, gate or delay."""
    number = flight.replace(" ", "").upper()
    if number not in FLIGHTS:
        raise KeyError(f"no flight {number}; known flights: {', '.join(sorted(FLIGHTS))}")
    return {"flight": number, "day": day, **FLIGHTS[number]}


def list_flights(destination: str) -> list[str]:
    """Flight numbers arriving at an airport code (e.g. JFK)."""
    return sorted(n for n, f in FLIGHTS.items() if f["to"] == destination.upper())
