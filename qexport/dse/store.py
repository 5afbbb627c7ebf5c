"""The results table (SQLite, stdlib): one row per (trial, hardware point), written as each trial finishes.

A rerun reads it back and skips every point already recorded (``ok``, and ``failed`` unless asked to
retry), so an interrupted sweep resumes where it stopped. Only the client process writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from qexport.errors import QExportError

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    trial_key TEXT NOT NULL,
    hardware_key TEXT NOT NULL,
    trial_config TEXT NOT NULL,
    hardware_config TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    accuracy REAL,
    fake_quant_accuracy REAL,
    latency_ms REAL,
    cycles INTEGER,
    energy_nj REAL,
    size_bytes INTEGER,
    lut INTEGER,
    ff INTEGER,
    dsp INTEGER,
    seconds REAL,
    worker TEXT,
    finished REAL,
    PRIMARY KEY (trial_key, hardware_key)
)
"""
COLUMNS = (
    "trial_key",
    "hardware_key",
    "trial_config",
    "hardware_config",
    "status",
    "error",
    "accuracy",
    "fake_quant_accuracy",
    "latency_ms",
    "cycles",
    "energy_nj",
    "size_bytes",
    "lut",
    "ff",
    "dsp",
    "seconds",
    "worker",
    "finished",
)


class ResultStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute(SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(points)")}
            for column in ("lut", "ff", "dsp"):  # tables written before the resources columns
                if column not in present:
                    self._db.execute(f"ALTER TABLE points ADD COLUMN {column} INTEGER")
            self._db.commit()
        except sqlite3.DatabaseError as error:
            raise QExportError(f"{self.path}: cannot use as the results database ({error})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def record(self, result: dict[str, Any], trial_config: dict[str, Any], hardware: dict[str, dict[str, Any]]) -> None:
        """Insert (or replace) the rows of one evaluated trial, committed at once."""
        rows = []
        for point in result["points"]:
            values = {
                "trial_key": result["trial_key"],
                "trial_config": json.dumps(trial_config, sort_keys=True),
                "hardware_config": json.dumps(hardware[point["hardware_key"]], sort_keys=True),
                "seconds": result.get("seconds"),
                "worker": result.get("worker"),
                "finished": time.time(),
                **{key: result.get(key) for key in ("accuracy", "fake_quant_accuracy", "size_bytes")},
                **point,
            }
            rows.append(tuple(values.get(column) for column in COLUMNS))
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO points ({', '.join(COLUMNS)}) VALUES ({placeholders})", rows)

    def rows(self) -> list[dict[str, Any]]:
        cursor = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM points ORDER BY finished, rowid")
        return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]

    def done(self, retry_failed: bool = False) -> set[tuple[str, str]]:
        """(trial key, hardware key) of the points a rerun skips."""
        query = "SELECT trial_key, hardware_key FROM points"
        if retry_failed:
            query += " WHERE status = 'ok'"
        return {(trial, hw) for trial, hw in self._db.execute(query)}
