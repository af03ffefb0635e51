window.__docusaurus = true;
