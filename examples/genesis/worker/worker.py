"""Genesis worker: announces readiness on its log, then works until stopped."""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"{os.environ.get('TUG_INSTANCE', 'worker')}: worker ready", flush=True)
while True:
    time.sleep(1)
