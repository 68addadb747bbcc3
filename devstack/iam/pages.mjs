// The dev IAM's HTML pages: plain forms that a test can fill in over HTTP (no JavaScript, no
// external resources), with labels for accessibility. Every interpolated value is escaped.
const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

export const TITLE = 'CMS IAM development login';

const STYLE = 'body{font-family:sans-serif;max-width:28em;margin:2em auto;padding:0 1em}'
  + 'label{display:block;margin-top:.8em}input{font-size:1em;width:100%;box-sizing:border-box}'
  + 'button{margin-top:1em;font-size:1em}.error{color:#a00;font-weight:bold}';

export function page(heading, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(heading)}</title><style>${STYLE}</style></head>
<body>
<main>
<h1>${escapeHtml(heading)}</h1>
${body}
</main>
</body>
</html>
`;
}

/** The login page: exactly one form posting `login` and `password` to `action`. */
export function loginPage({ action, clientName, login = '', error }) {
  const alert = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>\n` : '';
  return page(TITLE, `<p>Sign in to <strong>${escapeHtml(clientName)}</strong> with a development account.</p>
${alert}<form method="post" action="${escapeHtml(action)}">
<label for="login">Username</label>
<input id="login" name="login" type="text" autocomplete="username" required value="${escapeHtml(login)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>`);
}

export function messagePage(heading, message) {
  return page(heading, `<p>${escapeHtml(message)}</p>`);
}

// oidc-provider's page hooks (device flow, logout, errors), all in the same plain style.
export const providerPages = {
  async userCodeInputSource(ctx, form, out, err) {
    let message = 'Enter the code shown on your device.';
    if (err && (err.userCode || err.name === 'NoCodeError')) message = 'That code is not valid. Try again.';
    else if (err) message = 'The request could not be processed. Start again on your device.';
    // oidc-provider's form holds the xsrf field and the code input; give that input a label.
    const labelled = form.replace('name="user_code"', 'id="user_code" name="user_code"');
    ctx.body = page('CMS IAM development device login', `<p>${escapeHtml(message)}</p>
<label for="user_code">Device code</label>
${labelled}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
  },
  async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
    ctx.body = page('CMS IAM development device login', `<p>Allow <strong>${escapeHtml(client.clientName || client.clientId)}</strong>
on the device showing the code <code>${escapeHtml(userCode)}</code>?</p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
  },
  async successSource(ctx) {
    ctx.body = messagePage('Device signed in', 'You can close this page and return to your device.');
  },
  async logoutSource(ctx, form) {
    ctx.body = page('Sign out of the CMS IAM development login', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<button type="submit" form="op.logoutForm">Stay signed in</button>`);
  },
  async postLogoutSuccessSource(ctx) {
    ctx.body = messagePage('Signed out', 'You are signed out of the CMS IAM development login.');
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    const details = Object.entries(out)
      .map(([key, value]) => `<p><strong>${escapeHtml(key)}</strong>: ${escapeHtml(value)}</p>`).join('\n');
    ctx.body = page('CMS IAM development login: error', details);
  },
};
