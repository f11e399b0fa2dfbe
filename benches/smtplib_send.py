"""The reference client for benches/deliver.rs: Python's smtplib sending
prepared messages over one connection.

usage: smtplib_send.py PORT MESSAGES.jsonl

Each line of MESSAGES.jsonl is {"from": ..., "to": ..., "raw": <base64>}.
All messages are read before the clock starts; the time from connecting to
QUIT is printed on stdout in seconds.
"""
import base64
import json
import smtplib
import sys
import time


def main():
    port = int(sys.argv[1])
    with open(sys.argv[2]) as f:
        messages = [json.loads(line) for line in f]
    prepared = [(m["from"], [m["to"]], base64.b64decode(m["raw"])) for m in messages]
    start = time.perf_counter()
    smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.org")
    for sender, recipients, raw in prepared:
        smtp.sendmail(sender, recipients, raw)
    smtp.quit()
    print("%.6f" % (time.perf_counter() - start))


if __name__ == "__main__":
    main()
