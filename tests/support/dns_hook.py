"""DNS-01 hook for the tests: sets and clears TXT records in
pebble-challtestsrv through its management API.

    dns_hook.py MANAGEMENT_URL present|cleanup NAME VALUE
"""
import json
import sys
import urllib.request


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as rsp:
        rsp.read()


def main():
    base, action, name, value = sys.argv[1:5]
    if action == "present":
        post(base, "/set-txt", {"host": name, "value": value})
    elif action == "cleanup":
        post(base, "/clear-txt", {"host": name})
    else:
        sys.exit("unknown action " + action)
    print(action, name)


if __name__ == "__main__":
    main()
