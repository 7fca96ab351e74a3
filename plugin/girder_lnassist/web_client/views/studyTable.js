// The study table on Girder folder pages: one row per slide of the folder (GET
// /lnassist/folder/{id}/summary, so counts follow every relabel, edit and deletion), sortable by any
// column, with a CSV download and, for users who may write the folder, "Run LN analysis on this
// folder". Folders without large images show no table.
import _ from 'underscore';
import $ from 'jquery';

import HierarchyWidget from '@girder/core/views/widgets/HierarchyWidget';
import {wrap} from '@girder/core/utilities/PluginUtils';
import {restRequest} from '@girder/core/rest';
import {getCurrentUser} from '@girder/core/auth';
import {AccessType} from '@girder/core/constants';

import webRoot from './webRoot';
import studyTableTemplate from '../templates/studyTable.pug';
import '../stylesheets/lnassist.styl';

const COLUMNS = [
    {key: 'name', title: 'Slide'},
    {key: 'positive', title: 'Positive LNs'},
    {key: 'negative', title: 'Negative LNs'},
    {key: 'total', title: 'LNs'},
    {key: 'review_state', title: 'Review'},
    {key: 'model_version', title: 'Model'}
];

function renderStudy(widget, folder) {
    const container = widget.$('.g-lnassist-study');
    const state = widget._lnassistStudy;
    if (!state.answer || !state.answer.count) {
        container.empty();
        return;
    }
    const rows = _.sortBy(state.answer.rows, (row) => {
        const value = row[state.sort];
        return typeof value === 'string' ? value.toLowerCase() : value;
    });
    if (state.descending) {
        rows.reverse();
    }
    container.html(studyTableTemplate({
        columns: COLUMNS,
        rows,
        totals: state.answer.totals,
        sort: state.sort,
        descending: state.descending,
        canRun: folder.getAccessLevel() >= AccessType.WRITE,
        message: state.message,
        jobUrl: state.jobId ? `#job/${state.jobId}` : null,
        csvUrl: `${webRoot()}/api/v1/lnassist/folder/${folder.id}/summary?format=csv&limit=0`,
        viewerUrl: (row) => `${webRoot()}/histomics#?image=${row.item_id}`
    }));
}

function loadStudy(widget, folder) {
    return restRequest({url: `lnassist/folder/${folder.id}/summary`, data: {limit: 0}, error: null}).done((answer) => {
        widget._lnassistStudy.answer = answer;
        renderStudy(widget, folder);
    }).fail(() => widget.$('.g-lnassist-study').empty());
}

// Slides that need no analysis (already analysed with the current models, or reviewed) are
// skipped by the server as the batch reaches them, so the outcome is only known as it runs.
function batchMessage(batch) {
    const states = batch.states;
    const parts = ['done', 'skipped', 'failed', 'canceled']
        .filter((state) => states[state]).map((state) => `${states[state]} ${state}`);
    if (batch.status === 'running' || batch.status === 'creating') {
        return `LN analysis of ${batch.total} slide(s) running: ${batch.ended_slides} of ${batch.total} ended${parts.length ? ` (${parts.join(', ')})` : ''}.`;
    }
    return `LN analysis of ${batch.total} slide(s) ${batch.status}: ${parts.join(', ') || 'nothing to do'}.`;
}

function followBatch(view, folder, batch) {
    const state = view._lnassistStudy;
    state.message = batchMessage(batch);
    state.jobId = batch.job_id;
    loadStudy(view, folder);
    if (batch.status === 'running' || batch.status === 'creating') {
        window.setTimeout(() => {
            if (view._lnassistStudy !== state) {
                return; // the user left this folder
            }
            restRequest({url: `lnassist/batch/${batch.id}`, error: null})
                .done((next) => followBatch(view, folder, next));
        }, 3000);
    }
}

wrap(HierarchyWidget, 'render', function (render, ...args) {
    const result = render.apply(this, args);
    const folder = this.parentModel;
    if (folder.resourceName !== 'folder' || !getCurrentUser()) {
        return result;
    }
    if (!this._lnassistStudy || this._lnassistStudy.folderId !== folder.id) {
        this._lnassistStudy = {folderId: folder.id, sort: 'name', descending: false};
    }
    if (!this.$('.g-lnassist-study').length) {
        $('<div class="g-lnassist-study"></div>').insertBefore(this.$('.g-folder-list-container'));
        this.$el.on('click', '.g-lnassist-study th[data-key]', (evt) => {
            const key = $(evt.currentTarget).data('key');
            const state = this._lnassistStudy;
            state.descending = state.sort === key ? !state.descending : false;
            state.sort = key;
            renderStudy(this, folder);
        });
        this.$el.on('click', '.g-lnassist-run-folder', () => {
            this.$('.g-lnassist-run-folder').prop('disabled', true);
            restRequest({method: 'POST', url: `lnassist/folder/${folder.id}/analyze`, error: null}).done((batch) => {
                followBatch(this, folder, batch);
            }).fail((xhr) => {
                this._lnassistStudy.message = `LN analysis could not start: ${(xhr.responseJSON || {}).message || xhr.statusText}`;
                renderStudy(this, folder);
            });
        });
    }
    loadStudy(this, folder);
    return result;
});
