window.docusaurusMain = true;
