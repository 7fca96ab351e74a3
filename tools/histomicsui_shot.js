// A screenshot of a slide and its annotations in HistomicsUI, as a pathologist would see it, from the
// stack of tools/dsa_stack.py (after `dsa_stack.py web`, which also installs playwright-core):
//
//   NODE_PATH=/var/tmp/lnassist-dsa/node/node_modules node tools/histomicsui_shot.js ITEM_ID OUT.png \
//       [--wait MS] [--bounds LEFT,TOP,RIGHT,BOTTOM] [--points '[[x, y], ...]'] [--hide-panels]
//
// Logs in as the stack's admin (admin.json; the token goes into the browser only, never printed),
// opens /histomics#?image=ITEM_ID (showing --bounds, in base pixels, if given) in headless Chromium,
// waits (default 20000 ms) for tiles and annotations, hides HistomicsUI's side panels if asked (so that
// the whole map shows) and writes the screenshot. The last line of
// output is JSON: {"points": the page pixel of each --points base pixel, "errors": the page's errors}.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

function parseArgs(argv) {
    const args = { wait: 20000, bounds: null, points: [], hidePanels: false };
    const positional = [];
    for (let i = 0; i < argv.length; i += 1) {
        if (argv[i] === '--wait') args.wait = parseInt(argv[++i], 10);
        else if (argv[i] === '--bounds') args.bounds = argv[++i];
        else if (argv[i] === '--points') args.points = JSON.parse(argv[++i]);
        else if (argv[i] === '--hide-panels') args.hidePanels = true;
        else positional.push(argv[i]);
    }
    [args.item, args.out] = positional;
    return args;
}

(async () => {
    const args = parseArgs(process.argv.slice(2));
    if (!args.item || !args.out) {
        console.error('usage: node tools/histomicsui_shot.js ITEM_ID OUT.png [--wait MS] [--bounds L,T,R,B] ' +
            '[--points JSON] [--hide-panels]');
        process.exit(2);
    }
    const stateDir = process.env.LNASSIST_DSA_DIR || '/var/tmp/lnassist-dsa';
    const state = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json')));
    const admin = JSON.parse(fs.readFileSync(path.join(stateDir, 'admin.json')));
    const basic = Buffer.from(`${admin.login}:${admin.password}`).toString('base64');
    const auth = await fetch(`${state.api_url}/user/authentication`, { headers: { Authorization: `Basic ${basic}` } });
    if (!auth.ok) {
        throw new Error(`login failed: HTTP ${auth.status}`);
    }
    const token = (await auth.json()).authToken.token;
    const root = state.api_url.replace(/\/api\/v1$/, '');
    const browser = await chromium.launch({
        executablePath: '/usr/bin/chromium',
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
            '--disable-background-networking', '--disable-component-update', '--disable-sync']
    });
    try {
        const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
        // The cookie authorises the tile images, localStorage the client's own requests.
        await context.addCookies([{ name: 'girderToken', value: token, domain: new URL(root).hostname, path: '/' }]);
        const page = await context.newPage();
        const errors = [];
        page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
        page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
        await page.goto(`${root}/`, { waitUntil: 'load' });
        await page.evaluate((t) => localStorage.setItem('girderToken', t), token);
        const bounds = args.bounds ? `&bounds=${args.bounds},0` : '';
        await page.goto(`${root}/histomics#?image=${args.item}${bounds}`, { waitUntil: 'load' });
        await page.waitForTimeout(args.wait);
        if (args.hidePanels) {
            await page.evaluate(() => document.querySelectorAll('.s-panel-group').forEach((e) => { e.style.display = 'none'; }));
            await page.waitForTimeout(500);
        }
        await page.screenshot({ path: args.out });
        const points = await page.evaluate((basePoints) => {
            const node = document.querySelector('.geojs-map');
            const map = window.geo.jQuery(node).data('data-geojs-map');
            const rect = node.getBoundingClientRect();
            return basePoints.map(([x, y]) => {
                const p = map.gcsToDisplay({ x, y });
                return [p.x + rect.left, p.y + rect.top];
            });
        }, args.points);
        console.log(JSON.stringify({ points, errors }));
    } finally {
        await browser.close();
    }
})().catch((e) => {
    console.error(`histomicsui_shot: ${e.message}`);
    process.exit(1);
});
