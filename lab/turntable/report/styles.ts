// The turntable report's inline stylesheet and the probes' colours (lab/turntable/report.ts).

export const COLOURS = { ping: '#1f6fb4', udp: '#2a9d4b', serial: '#d9822b', serialDst: '#b5561b', hypervisor: '#7b4fb0', internal: '#666', gap: '#d62828' };

export const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5a6272;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 14px;min-width:260px;flex:1}
.card h3{margin:0 0 6px}
table{border-collapse:collapse;background:#fff}
table.migs{font-size:12.5px}
td.nw{white-space:nowrap}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:44%}
table.kv{width:100%}
tr.fail td{background:#fdecec}
.ok{color:#1c7c3a;font-weight:600}.bad{color:#b3261e;font-weight:600}
.muted{color:#6b7280}
.findings li{margin:2px 0}
.scroll{overflow-x:auto}
figure{margin:10px 0 18px;background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px}
figcaption{color:#4b5261;font-size:13px;margin-top:4px}
svg text{font:11px system-ui,sans-serif;fill:#333}
svg .axis{stroke:#9aa3b2;stroke-width:1}
svg .grid{stroke:#e6e9ee;stroke-width:1}
svg .mark{stroke:#555;stroke-width:1;stroke-dasharray:3 3}
svg .t0{stroke:#111;stroke-width:1.2}
svg text.lbl{font-weight:600}
svg text.gapl{fill:${COLOURS.gap};font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.radars{display:flex;flex-wrap:wrap;gap:12px}
.radars figure{flex:0 1 560px;max-width:560px}
.verdict{font-size:12px;color:#4b5261}
`;
