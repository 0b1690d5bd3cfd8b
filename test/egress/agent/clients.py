"""GET a URL with httpx or requests as agent code would: proxy settings
from the environment (HTTPS_PROXY), the test CA for TLS."""
import sys

kind, url = sys.argv[1], sys.argv[2]
CA = "/sandbox/ca.pem"
try:
    if kind == "httpx":
        import httpx
        r = httpx.get(url, verify=CA, timeout=10)
    else:
        import requests
        r = requests.get(url, verify=CA, timeout=10)
    print(r.status_code, r.text.strip())
except Exception as e:  # the test reads the exception's type and text
    print(type(e).__name__, e)
    sys.exit(1)
