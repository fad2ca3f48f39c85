"""Test PKI made at test time (nothing committed that could expire): see pki.py."""
