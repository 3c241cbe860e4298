# Usage: python3 rcaeval_like.py OUT_DIR SEED N_CASES
"""Synthetic RCAEval-RE1/RE2-like cases: wide CSV `time` + `<svc>_<metric>`, 1 s samples,
10 min, fault at a random time in the middle. Writes case dirs with data.csv, edges.csv,
truth.txt (service, fault, inject time)."""
import random, math, os, sys
random.seed(int(sys.argv[2]) if len(sys.argv) > 2 else 7)
out = sys.argv[1]
svcs = ["frontend","cartservice","productcatalog","currencyservice","paymentservice",
        "shippingservice","emailservice","checkoutservice","recommendation","adservice","redis"]
edges = [("frontend","cartservice"),("frontend","productcatalog"),("frontend","currencyservice"),
         ("frontend","recommendation"),("frontend","adservice"),("frontend","checkoutservice"),
         ("frontend","shippingservice"),("checkoutservice","paymentservice"),("checkoutservice","emailservice"),
         ("checkoutservice","cartservice"),("checkoutservice","currencyservice"),("checkoutservice","shippingservice"),
         ("checkoutservice","productcatalog"),("recommendation","productcatalog"),("cartservice","redis")]
callers = {s: [a for a,b in edges if b==s] for s in svcs}
def ancestors(s):
    seen=set(); st=[s]
    while st:
        x=st.pop()
        for c in callers[x]:
            if c not in seen: seen.add(c); st.append(c)
    return seen
faults = ["cpu","mem","disk","delay","loss","socket"]
N=600
t0=1714556000
for case in range(int(sys.argv[3]) if len(sys.argv)>3 else 60):
    fault = faults[case % len(faults)]
    target = random.choice([s for s in svcs if s != "frontend"] + ["frontend"]*0)
    inj = random.randint(280, 320)
    base = {s: dict(cpu=random.uniform(0.02,0.5), mem=random.uniform(50e6,500e6), lat=random.uniform(2,60),
                    disk=random.uniform(1e3,1e5), sock=random.uniform(10,200)) for s in svcs}
    # own latency contribution; a caller's latency includes callees'
    cols = {}
    anc = ancestors(target)
    for s in svcs:
        b = base[s]
        noise = lambda sd: random.gauss(0, sd) if random.random() > 0.02 else random.gauss(0, sd*6)
        cpu=[];mem=[];l50=[];l90=[];dsk=[];sock=[]
        for i in range(N):
            f = i >= inj
            c = b["cpu"]*(1+noise(0.1)); m = b["mem"]*(1+noise(0.005)); l = b["lat"]*(1+noise(0.1))
            d = b["disk"]*(1+abs(noise(0.3))); k = b["sock"]*(1+noise(0.1))
            load_drop = 1.0
            if f:
                extra_lat = 0
                if fault=="cpu":
                    if s==target: c += random.uniform(0.8,1.0); extra_lat = b["lat"]*0.8
                    elif s in anc: extra_lat = base[target]["lat"]*0.8
                elif fault=="mem":
                    if s==target: m += (i-inj)*b["mem"]*0.01
                elif fault=="disk":
                    if s==target: d += b["disk"]*20 + 5e6; extra_lat = b["lat"]*0.3
                    elif s in anc: extra_lat = base[target]["lat"]*0.3
                elif fault=="delay":
                    if s==target or s in anc: extra_lat = 200*(1+noise(0.05))
                elif fault=="loss":
                    if s==target or s in anc: extra_lat = (300 if random.random()<0.3 else 20)
                elif fault=="socket":
                    if s==target: k += b["sock"]*3; extra_lat = b["lat"]*0.5
                    elif s in anc: extra_lat = base[target]["lat"]*0.5
                # callers of a slow service get fewer requests through: slight cpu drop
                if s in anc: c *= 0.85
                l += extra_lat
            cpu.append(max(c,0)); mem.append(m); l50.append(max(l,0)); l90.append(max(l*1.8+abs(noise(b["lat"]*0.3)),0)); dsk.append(d); sock.append(k)
        cols[f"{s}_cpu"]=cpu; cols[f"{s}_mem"]=mem; cols[f"{s}_latency-50"]=l50; cols[f"{s}_latency-90"]=l90
        cols[f"{s}_diskio"]=dsk; cols[f"{s}_socket"]=sock
    d = os.path.join(out, f"case{case:03d}")
    os.makedirs(d, exist_ok=True)
    names = list(cols)
    with open(os.path.join(d,"data.csv"),"w") as fh:
        fh.write("time,"+",".join(names)+"\n")
        for i in range(N):
            fh.write(str(t0+i)+","+",".join(f"{cols[n][i]:.6g}" for n in names)+"\n")
    with open(os.path.join(d,"edges.csv"),"w") as fh:
        fh.write("caller,callee\n"+"\n".join(f"{a},{b}" for a,b in edges)+"\n")
    with open(os.path.join(d,"truth.txt"),"w") as fh:
        fh.write(f"{target} {fault} {t0+inj}\n")
