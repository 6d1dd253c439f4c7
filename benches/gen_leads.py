#!/usr/bin/env python3
"""Write a synthetic B2B lead list of about SIZE_MB megabytes to PATH (deterministic, seeded).

Columns: email, first_name, last_name, company, title, phone, country, notes. About 5% of rows
quote a comma, 2% double a quote, 1% hold a newline in notes; about 15% carry non-ASCII names.
Usage: gen_leads.py PATH SIZE_MB [schema]

With `schema`, the list fits benches/leads.schema.json: every email is unique (numbered by row),
`notes` gives way to an integer `employees`, and about 1% of rows break the schema (an email
without a domain, a country outside the enum, 0 employees, a phone in another form).
"""
import random, sys

path, size_mb = sys.argv[1], float(sys.argv[2])
schema = len(sys.argv) > 3 and sys.argv[3] == "schema"
rng = random.Random(42)
first = ["Ana", "John", "Wei", "Zoë", "Jürgen", "Chloé", "Søren", "Aiko", "Mateo", "Priya", "Olu", "Sara"]
last = ["García", "Smith", "Li", "Müller", "Dubois", "Nakamura", "Øberg", "Kowalski", "Okafor", "Rossi"]
companies = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises", "北京数据"]
titles = ["CTO", "Head of Data", "VP Sales", "Procurement Manager", "Founder", "Data Engineer"]
countries = ["ES", "GB", "DE", "FR", "CN", "JP", "US", "IN", "NG", "IT"]
words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
target = int(size_mb * 1024 * 1024)
written = 0
with open(path, "w", encoding="utf-8", newline="") as f:
    header = "email,first_name,last_name,company,title,phone,country,notes\n"
    if schema:
        header = "email,first_name,last_name,company,title,phone,country,employees\n"
    row = 0
    f.write(header)
    written += len(header)
    buf = []
    while written < target:
        fn, ln = rng.choice(first), rng.choice(last)
        company = rng.choice(companies)
        r = rng.random()
        if r < 0.05:
            company = f'"{company}, Ltd."'
        elif r < 0.07:
            company = f'"{company} ""Group"""'
        notes = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.01:
            notes = f'"{notes}\nsecond line"'
        phone = f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(100000, 999999)}"
        email = f"{fn.lower()}.{ln.lower()}{rng.randint(1, 99999)}@example.com"
        line = f"{email},{fn},{ln},{company},{rng.choice(titles)},{phone},{rng.choice(countries)},{notes}\n"
        if schema:
            row += 1
            email = f"{fn.lower()}.{ln.lower()}.{row}@example.com"
            country = rng.choice(countries)
            employees = str(rng.randint(1, 50000))
            bad = rng.random()
            if bad < 0.0025:
                email = f"{fn.lower()}.{ln.lower()}.{row}@"
            elif bad < 0.005:
                country = "UK"
            elif bad < 0.0075:
                employees = "0"
            elif bad < 0.01:
                phone = phone.replace(" ", "-")
            line = f"{email},{fn},{ln},{company},{rng.choice(titles)},{phone},{country},{employees}\n"
        buf.append(line)
        written += len(line.encode("utf-8"))
        if len(buf) >= 10000:
            f.write("".join(buf))
            buf = []
    f.write("".join(buf))
