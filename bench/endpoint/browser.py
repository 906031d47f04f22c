#!/usr/bin/env python3
"""One headless Chromium tab on tug's dashboard, driven from bench/endpoint.sh over stdin/stdout.

Usage: browser.py BASE LOGIN_URL PROFILE_DIR SERVICE

Starts Debian's Chromium (chromedriver, Selenium; the options of tests/data/ui/dashboard.py) with
its profile in PROFILE_DIR (so the caller can find its processes: `pgrep -f PROFILE_DIR`), opens
the one-time LOGIN_URL (the session cookie), waits until the page shows SERVICE, then answers one
line per command read from stdin:

  ui       open BASE/ui/ (the session cookie is kept) and wait until SERVICE is shown: the page then
           holds its server-sent-events stream open, a snapshot a second
  blank    open about:blank: the stream is closed, Chromium stays (idle)
  updated  the page's "updated HH:MM:SS" text and its connection pill (to show the stream flowed)
  quit     (or end of input) close Chromium

Each answer is one line: `ok ...` or `error ...`.
"""
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, login, profile, service = sys.argv[1:5]


def say(line):
    print(line, flush=True)


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", f"--user-data-dir={profile}"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 30, poll_frequency=0.2)
shown = f'[data-service="{service}"]'


def text_of(selector):
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


try:
    driver.get(login)
    wait.until(lambda d: d.current_url.rstrip("/").endswith("/ui"), "the login link did not land on /ui/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, shown), f"service {service} never shown")
    say("ok logged in")
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "ui":
                driver.get(base + "/ui/")
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, shown), f"service {service} never shown")
                say("ok ui")
            elif command == "blank":
                driver.get("about:blank")
                say("ok blank")
            elif command == "updated":
                say(f"ok {text_of('#updated') or '-'} | {text_of('#connection') or '-'}")
            elif command in ("quit", ""):
                break
            else:
                say(f"error unknown command {command!r}")
        except Exception as e:   # answer, so the caller never waits forever
            say(f"error {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
finally:
    driver.quit()
