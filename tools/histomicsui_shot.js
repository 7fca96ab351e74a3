// A screenshot of a slide and its annotations in HistomicsUI, as a pathologist would see it, from the
// stack of tools/dsa_stack.py (after `dsa_stack.py web` and a restart):
//
//   NODE_PATH=/var/tmp/lnassist-dsa/node/node_modules node tools/histomicsui_shot.js ITEM_ID OUT.png [WAIT_MS]
//
// Logs in as the stack's admin (admin.json; the token goes into the browser only, never printed),
// opens /histomics#?image=ITEM_ID in headless Chromium, waits WAIT_MS (default 20000) for tiles and
// annotations, writes the screenshot and prints the page's errors.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const stateDir = process.env.LNASSIST_DSA_DIR || '/var/tmp/lnassist-dsa';
const [itemId, out, waitMs] = process.argv.slice(2);
if (!itemId || !out) {
    console.error('usage: node tools/histomicsui_shot.js ITEM_ID OUT.png [WAIT_MS]');
    process.exit(2);
}

(async () => {
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
        await page.goto(`${root}/histomics#?image=${itemId}`, { waitUntil: 'load' });
        await page.waitForTimeout(parseInt(waitMs || '20000', 10));
        await page.screenshot({ path: out });
        console.log(`wrote ${out}`);
        errors.forEach((e) => console.log(e));
    } finally {
        await browser.close();
    }
})().catch((e) => {
    console.error(`histomicsui_shot: ${e.message}`);
    process.exit(1);
});
