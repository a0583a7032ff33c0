"""Settings every layer may read: the default of each one (defaults.py); imports nothing else of the
package."""
