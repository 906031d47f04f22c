#!/usr/bin/env python3
"""Drives tug's dashboard in Debian's headless Chromium (chromedriver, Selenium).

Usage: dashboard.py BASE LOGIN_URL SCREENSHOT SERVICES INSTANCES CANARY_SERVICE STEP_TEXT

Prints one JSON object: what the browser saw at each stage. Exits non-zero, saying why, when a
stage does not hold; the Rust test (tests/cli/dashboard.rs) checks the daemon's side.
"""
import http.server
import json
import sys
import tempfile
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, login, screenshot, services, instances, canary, step_text = sys.argv[1:8]
services = [s for s in services.split(",") if s]
instances = [i for i in instances.split(",") if i]
seen = {}


def fail(message):
    print(json.dumps(seen))
    sys.exit(f"dashboard: {message}")


# A page on another origin of the same host (another port: same site, so the browser sends the
# SameSite=Strict cookie) that tries to promote the canary behind the user's back.
FORGED = f"""<!doctype html><title>forging</title><script>
fetch({json.dumps(base + "/ui/api/rollout")}, {{
  method: "POST", mode: "no-cors", credentials: "include",
  headers: {{ "Content-Type": "text/plain" }},
  body: JSON.stringify({{ service: {json.dumps(canary)}, action: "promote" }})
}}).then(() => document.title = "sent", e => document.title = "error: " + e);
</script>"""


class Forger(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = FORGED.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


forger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forger)
threading.Thread(target=forger.serve_forever, daemon=True).start()

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", f"--user-data-dir={tempfile.mkdtemp(prefix='tug-chromium-')}"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 30, poll_frequency=0.2)


def text_of(selector):
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else None


try:
    # 1. No session: the page asks to log in and shows nothing of the stack.
    driver.get(base + "/ui/")
    seen["without_cookie"] = driver.find_element(By.TAG_NAME, "body").text
    if driver.find_elements(By.CSS_SELECTOR, "[data-service]"):
        fail("the page showed services without a session")

    # 2. The login link: a session cookie, then the live page.
    driver.get(login)
    wait.until(lambda d: d.current_url.rstrip("/").endswith("/ui"))
    cookies = {c["name"]: c for c in driver.get_cookies()}
    seen["cookie"] = {k: cookies["tug_session"].get(k) for k in ("httpOnly", "sameSite", "path")} \
        if "tug_session" in cookies else None
    for name in services:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-service="{name}"]'),
                   f"service {name} never shown")
    for name in instances:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-instance="{name}"]'),
                   f"instance {name} never shown")
    seen["services"] = [e.get_attribute("data-service")
                        for e in driver.find_elements(By.CSS_SELECTOR, "#services > [data-service]")]
    seen["instances"] = [e.get_attribute("data-instance")
                         for e in driver.find_elements(By.CSS_SELECTOR, "[data-instance]")]
    rollout = f'[data-rollout="{canary}"]'
    wait.until(lambda d: step_text in (text_of(rollout) or ""), f"the rollout never showed {step_text}")
    seen["rollout"] = text_of(rollout)
    # Live charts have data to draw once a few ticks have arrived.
    time.sleep(3)
    driver.save_screenshot(screenshot)

    # 3. A forged cross-origin POST, with the user's cookie: refused, nothing changes.
    driver.get(f"http://127.0.0.1:{forger.server_address[1]}/")
    wait.until(lambda d: d.title != "forging", "the forged request never completed")
    seen["forged"] = driver.title
    driver.get(base + "/ui/")
    wait.until(lambda d: step_text in (text_of(rollout) or ""), "the rollout moved after the forged POST")
    time.sleep(2)
    seen["after_forged"] = text_of(rollout)
    if step_text not in (seen["after_forged"] or ""):
        fail("the forged POST changed the rollout")

    # 4. Promote, by clicking the button.
    button = f'button[data-action="promote"][data-service="{canary}"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, button), "no promote button")
    driver.find_element(By.CSS_SELECTOR, button).click()
    wait.until(lambda d: "error" not in (d.find_element(By.ID, "message").get_attribute("class") or "")
               and (d.find_element(By.ID, "message").text or "").strip(), "no answer to the click")
    seen["message"] = driver.find_element(By.ID, "message").text
    seen["message_class"] = driver.find_element(By.ID, "message").get_attribute("class")
finally:
    driver.quit()
    forger.shutdown()

print(json.dumps(seen))
