"""Exporters: everything here reads only the IR."""
